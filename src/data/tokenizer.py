"""Tokenizers: the lecture's characters (the corpus's sorted set, the default) and UTF-8 bytes (any text at all).

Either vocabulary is a plain string (its characters in id order; byte b is ``chr(b)``), so checkpoints can carry it
and still load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

import torch

from src.errors import UserError

TOKENIZERS = ("chars", "bytes")


class CharTokenizer:
    """Maps each character of a fixed vocabulary to its index in that vocabulary."""

    kind = "chars"

    def __init__(self, vocab: str) -> None:
        if not vocab:
            raise UserError("the vocabulary is empty: build it from a non-empty corpus with CharTokenizer.from_text")
        if len(set(vocab)) != len(vocab):
            raise UserError(f"the vocabulary has repeated characters: {vocab!r}")
        self.vocab = vocab
        self.stoi = {ch: i for i, ch in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of a corpus: its distinct characters, sorted (as in the lecture)."""
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def unknown(self, text: str) -> list[tuple[int, str]]:
        """(position, character) for every character of ``text`` outside the vocabulary."""
        return [(i, ch) for i, ch in enumerate(text) if ch not in self.stoi]

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            bad = self.unknown(text)
            shown = ", ".join(f"{ch!r} at {i}" for i, ch in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise UserError(
                f"{len(bad)} character(s) outside the vocabulary: {shown}{more}. Vocabulary: {self.vocab!r}"
            ) from None

    def decode(self, ids: list[int]) -> str:
        check_ids(ids, self.vocab_size)
        return "".join(self.vocab[i] for i in ids)

    def stream_decoder(self) -> Callable[..., str]:
        """``decode`` for a stream of ids arriving a few at a time (``final=True`` with the last ones)."""
        return lambda ids, final=False: self.decode(ids)


class ByteTokenizer:
    """UTF-8 bytes as tokens: a vocabulary of 256 that encodes any text; invalid byte runs decode to U+FFFD."""

    kind = "bytes"
    vocab = "".join(map(chr, range(256)))
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        check_ids(ids, self.vocab_size)
        return bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> Callable[..., str]:
        """``decode`` for a stream of ids: a character whose bytes arrive in several pieces comes out whole."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids, final=False: decoder.decode(bytes(check_ids(ids, 256)), final)


Tokenizer = CharTokenizer | ByteTokenizer


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The ids of ``prompt``; an empty prompt starts from a newline, as in the lecture (or from id 0 in a vocabulary
    without one). Id 0 is a newline only by luck: a NUL byte for ``bytes``, a tab in a corpus that has tabs."""
    if prompt:
        return tokenizer.encode(prompt)
    return tokenizer.encode("\n") if "\n" in tokenizer.vocab else [0]


def translate(ids: torch.Tensor, source_vocab: str, target_vocab: str, source: str) -> torch.Tensor:
    """``ids`` of ``source_vocab`` as the ids of the same characters in ``target_vocab``, a byte (or four) each,
    computed a chunk at a time (no int64 copy of a whole text); characters ``target_vocab`` lacks are refused by
    name, ``source`` saying whose they are (a flag and a path)."""
    if source_vocab == target_vocab:
        return ids
    missing = [ch for ch in source_vocab if ch not in target_vocab]
    if missing:
        raise UserError(
            f"{source} has {len(missing)} character(s) outside the model's vocabulary: {''.join(missing)!r}. "
            f"Vocabulary: {target_vocab!r}. Score a text written in those characters"
        )
    index = {ch: i for i, ch in enumerate(target_vocab)}
    table = torch.tensor(
        [index[ch] for ch in source_vocab], dtype=torch.uint8 if len(target_vocab) <= 256 else torch.int32
    )
    out = torch.empty(len(ids), dtype=table.dtype)
    for start in range(0, len(ids), 1 << 24):
        out[start : start + (1 << 24)] = table[ids[start : start + (1 << 24)].long()]
    return out


def check_ids(ids: list[int], vocab_size: int) -> list[int]:
    bad = sorted({i for i in ids if not 0 <= i < vocab_size})
    if bad:
        raise UserError(f"token ids outside the vocabulary of {vocab_size}: {bad[:10]}")
    return ids


def make_tokenizer(kind: str, vocab: str) -> Tokenizer:
    """The tokenizer a run or a checkpoint names, with its vocabulary."""
    if kind == "bytes":
        if vocab != ByteTokenizer.vocab:
            raise UserError("a bytes tokenizer's vocabulary is the 256 byte values; this one is not")
        return ByteTokenizer()
    if kind == "chars":
        return CharTokenizer(vocab)
    raise UserError(f"unknown tokenizer {kind!r}: choose one of {', '.join(TOKENIZERS)}")
