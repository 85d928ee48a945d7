"""Character tokenizer: the seeds' sorted-set vocabulary, with errors that point at the offending characters.

The vocabulary is a plain string (its characters in id order), so checkpoints can carry it and still load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import torch

from src.errors import UserError


class CharTokenizer:
    """Maps each character of a fixed vocabulary to its index in that vocabulary."""

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

    def encode_tensor(self, text: str) -> torch.Tensor:
        """``encode`` as the most compact integer tensor that holds every id (uint8 for up to 256 characters)."""
        dtype = torch.uint8 if self.vocab_size <= 256 else torch.int32
        return torch.tensor(self.encode(text), dtype=dtype)

    def decode(self, ids: list[int]) -> str:
        bad = sorted({i for i in ids if not 0 <= i < self.vocab_size})
        if bad:
            raise UserError(f"token ids outside the vocabulary of {self.vocab_size}: {bad[:10]}")
        return "".join(self.vocab[i] for i in ids)
