import pytest
import torch

from src.corpus import read_text
from src.tokenizer import CharTokenizer


def test_vocabulary_is_the_sorted_set_of_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab == " dehlorw"
    assert tok.vocab_size == 8


def test_round_trip():
    tok = CharTokenizer.from_text("abc, déjà vu!\n")
    text = "vu, déjà abc!\n"
    assert tok.decode(tok.encode(text)) == text


def test_seed_example_on_shakespeare(shakespeare):
    tok = CharTokenizer.from_text(read_text(shakespeare))
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


def test_encode_tensor_is_compact():
    tok = CharTokenizer.from_text("abcabc")
    ids = tok.encode_tensor("cab")
    assert ids.dtype == torch.uint8
    assert ids.tolist() == [2, 0, 1]
    big = CharTokenizer("".join(chr(0x4E00 + i) for i in range(300)))
    assert big.encode_tensor(chr(0x4E00 + 299)).dtype == torch.int32


def test_bad_vocabularies():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer("aba")
