"""The logprobs object as the API builds it: token names, and entries that follow the text as it is released."""

from src.data.tokenizer import ByteTokenizer, CharTokenizer
from src.serving.completions import Logprobs, token_string
from src.serving.scoring import Score


def test_a_byte_that_is_not_a_character_alone_is_named_as_openai_names_it():
    assert token_string(ByteTokenizer(), ord("A")) == "A"
    assert token_string(ByteTokenizer(), 0xC3) == "bytes:\\xc3"
    vocab = "".join(map(chr, range(300)))[-256:]  # 256 characters, not bytes: each token is its character
    assert token_string(CharTokenizer(vocab), 200) == vocab[200]


def test_entries_wait_for_their_text_and_a_stop_texts_tokens_are_dropped():
    built = Logprobs(CharTokenizer("abc"))
    scores = [Score(t, -0.5, [(t, -0.5)], "abc"[t]) for t in (0, 1, 2)]
    held = built.add("a", scores, finished=False)  # "bc" held back: it might begin a stop text
    assert held["tokens"] == ["a"] and held["text_offset"] == [0]
    done = built.add("", [], finished=True)  # the stop text was "bc": the text ends at "a"
    assert done["tokens"] == [] and not built.pending


def test_the_bytes_of_one_character_go_out_together_when_it_is_whole():
    built = Logprobs(ByteTokenizer())
    scores = [Score(0xC3, -1.0, [], ""), Score(0xA9, -0.1, [], "é")]  # "é" is two bytes
    part = built.add("é", scores, finished=True)
    assert part["tokens"] == ["bytes:\\xc3", "bytes:\\xa9"] and part["text_offset"] == [0, 0]
