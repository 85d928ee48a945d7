import pytest

from src.data.tokenizer import ByteTokenizer, CharTokenizer, make_tokenizer


def test_vocabulary_is_the_sorted_set_of_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab == " dehlorw"
    assert tok.vocab_size == 8


def test_round_trip():
    tok = CharTokenizer.from_text("abc, déjà vu!\n")
    text = "vu, déjà abc!\n"
    assert tok.decode(tok.encode(text)) == text


def test_seed_example_on_shakespeare(shakespeare):
    tok = CharTokenizer.from_text(shakespeare.read_text(encoding="utf-8"))
    assert tok.vocab_size == 65
    assert tok.encode("hii there") == [46, 47, 47, 1, 58, 46, 43, 56, 43]
    assert tok.decode([46, 47, 47, 1, 58, 46, 43, 56, 43]) == "hii there"


def test_unknown_characters_are_named_with_positions():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError) as err:
        tok.encode("abXcY")
    message = str(err.value)
    assert "'X' at 2" in message and "'Y' at 4" in message
    assert "'abc'" in message  # shows the vocabulary


def test_decode_rejects_ids_outside_the_vocabulary():
    tok = CharTokenizer.from_text("abc")
    for bad in ([3], [-1]):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode(bad)


def test_serialises_to_a_plain_string():
    tok = CharTokenizer.from_text("the quick brown fox\n")
    restored = CharTokenizer(tok.vocab)
    assert isinstance(tok.vocab, str)
    assert restored.encode("quick fox") == tok.encode("quick fox")


def test_bad_vocabularies():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer("aba")


UNICODE = "naïve café, 日本語の文章, emoji 🎉👩‍💻, combining e\u0301 and a\u0308, Ελληνικά, עברית\n"


def test_bytes_round_trip_any_text():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode(tok.encode(UNICODE)) == UNICODE


def test_bytes_decode_invalid_runs_to_the_replacement_character():
    assert ByteTokenizer().decode([0x61, 0xFF, 0xC3, 0x62]) == "a\ufffd\ufffdb"


def test_bytes_stream_decoder_keeps_characters_split_across_tokens_whole():
    tok = ByteTokenizer()
    decode = tok.stream_decoder()
    pieces = [decode([b]) for b in tok.encode(UNICODE)] + [decode([], final=True)]
    assert "".join(pieces) == UNICODE and "\ufffd" not in "".join(pieces)


def test_a_checkpoints_tokenizer_is_rebuilt_from_its_kind_and_vocabulary():
    assert isinstance(make_tokenizer("bytes", ByteTokenizer.vocab), ByteTokenizer)
    assert make_tokenizer("chars", "ab").encode("ba") == [1, 0]
    with pytest.raises(ValueError, match="unknown tokenizer 'words'"):
        make_tokenizer("words", "ab")
