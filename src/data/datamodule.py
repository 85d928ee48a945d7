"""CharDataModule: a text corpus as an endless, reproducible stream of random training blocks and a fixed val set.

The corpus is encoded once into a token cache (``src.data.token_cache``) in ``prepare_data`` and memory-mapped in
``setup``, so memory does not grow with its size and every rank maps the same file.

Training batches follow the lecture's ``get_batch`` (``x = data[i:i+T]``, ``y = data[i+1:i+T+1]``, ``i`` uniform)
but draw a whole batch with one gather. Batch ``n`` of global rank ``r`` is a pure function of ``(seed, r, n)``, so
ranks and workers draw different blocks, a seed replays its stream, and resuming only needs ``n``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from src.data.corpus import (
    SHAKESPEARE_FILE,
    SHAKESPEARE_SHA256,
    SHAKESPEARE_URL,
    corpus_files,
    ensure_shakespeare,
)
from src.data.token_cache import Tokens, load_tokens
from src.data.tokenizer import Tokenizer, make_tokenizer, translate
from src.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]


def stream_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (neighbouring tuples give unrelated streams)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(parts)}q", *parts), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def draw_blocks(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator) -> Batch:
    """``batch_size`` random (x, y) blocks of ``data``, with y one token ahead of x, in a single gather."""
    starts = torch.randint(len(data) - block_size, (batch_size, 1), generator=generator)
    chunk = data[starts + torch.arange(block_size + 1)].long()  # (B, T+1)
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


class BlockStream(IterableDataset):
    """The endless training stream of one rank, starting at batch ``start``; workers split it round-robin."""

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, seed: int, rank: int, start: int = 0):
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.seed, self.rank, self.start = seed, rank, start

    def batch(self, index: int) -> Batch:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.rank, index))
        return draw_blocks(self.data, self.block_size, self.batch_size, generator)

    def __iter__(self) -> Iterator[Batch]:
        # the DataLoader takes one batch from each worker in turn, so worker w serving every w-th batch keeps
        # the stream identical for any number of workers
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = self.start + worker
        while True:
            yield self.batch(index)
            index += workers


class FixedBatches(Dataset):
    """Precomputed batches, one item per batch (the validation set)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Batch:
        return self.x[i], self.y[i]


class ScoredWindows(Dataset):
    """Windows over ``ids`` that score every prediction (each token from the ones before it) exactly once: a
    window of up to ``block_size`` tokens starts every ``stride`` tokens and scores only the predictions that the
    window before it did not, so each has at least ``block_size - stride`` tokens of context (all that fit, at
    ``stride`` 1; ``stride == block_size`` is non-overlapping windows, the fast option). Targets that are not
    scored, or pad the last window, are -100, which cross-entropy ignores."""

    def __init__(self, ids: torch.Tensor, block_size: int, stride: int) -> None:
        self.ids, self.block_size, self.stride = ids, block_size, stride
        self.predictions = len(ids) - 1
        # window i starts at i * stride; the last is the first to reach the end (computed, not listed: a test
        # text of a billion tokens would otherwise hold millions of tuples)
        self.count = 0 if self.predictions < 1 else -(-max(self.predictions - block_size, 0) // stride) + 1

    def __len__(self) -> int:
        return self.count

    def window(self, i: int) -> tuple[int, int]:
        """(start, first scored position) of window ``i``: it scores what the window before it did not."""
        if not 0 <= i < self.count:
            raise IndexError(f"window {i} of {self.count}")
        start = i * self.stride
        return start, 0 if i == 0 else min(start - self.stride + self.block_size, self.predictions)

    def __getitem__(self, i: int) -> Batch:
        start, scored_from = self.window(i)
        chunk = self.ids[start : start + self.block_size + 1].long()
        x = torch.zeros(self.block_size, dtype=torch.long)
        y = torch.full((self.block_size,), -100, dtype=torch.long)
        x[: len(chunk) - 1], y[: len(chunk) - 1] = chunk[:-1], chunk[1:]
        y[: scored_from - start] = -100
        return x, y


class CharDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str | None = None,
        tokenizer: Literal["chars", "bytes"] = "chars",
        strict_utf8: bool = False,
        cache_dir: str = "data",
        block_size: int = 128,
        batch_size: int = 32,
        train_fraction: float = 0.9,
        val_batches: int = 20,
        seed: int = 1337,
        val_seed: int = 0,
        num_workers: int = 0,
        test_path: str | None = None,
        test_stride: int | None = None,
        url: str = SHAKESPEARE_URL,
        sha256: str = SHAKESPEARE_SHA256,
    ) -> None:
        """A text corpus as training blocks and a fixed validation set.

        Args:
            path: a UTF-8 text file to train on, or a folder (its files, recursively, in sorted order) or a glob
                of them; leave unset for tiny-shakespeare.
            tokenizer: "chars" (the lecture's: the corpus's characters) or "bytes" (UTF-8 bytes: any text).
            strict_utf8: refuse a folder or glob with files that are not UTF-8, instead of skipping them with a warning.
            cache_dir: where tiny-shakespeare is downloaded to (``<cache_dir>/tinyshakespeare/input.txt``) and
                where encoded corpora are kept (``<cache_dir>/tokens/``).
            block_size: context length T of every block.
            batch_size: blocks per training and validation batch.
            train_fraction: the first part of the text that is trained on; the rest is the validation split.
            val_batches: the size of the fixed validation set, in batches.
            seed: seed of the training stream (each rank derives its own stream from it).
            val_seed: seed of the validation blocks; keep it fixed so losses compare across runs.
            num_workers: DataLoader worker processes; 0 is fastest here, a batch is one gather.
            test_path: the text ``test`` scores (a file, folder or glob, in the model's vocabulary); by default the
                validation split, all of it.
            test_stride: how far apart ``test``'s windows start; every character is scored once with at least
                block_size - test_stride characters of context (1: all of them; block_size: the fastest). By
                default block_size // 2.
            url: where tiny-shakespeare is downloaded from.
            sha256: the checksum a download must match.
        """
        super().__init__()
        self.save_hyperparameters()
        problems = self.problems(dict(self.hparams))
        if problems:
            raise UserError("invalid data settings: " + "; ".join(f"--data.{p}" for p in problems))
        self._tokens: Tokens | None = None
        self.tokenizer: Tokenizer | None = None
        self.batches_drawn = 0  # training batches trained on so far: the stream position saved in checkpoints

    @staticmethod
    def problems(settings: dict) -> list[str]:
        """What is wrong with these settings (``__init__``'s arguments), each named with its value."""
        s = settings
        problems = [
            f"{k} must be positive, got {s[k]}" for k in ("block_size", "batch_size", "val_batches") if s[k] < 1
        ]
        if not 0 < s["train_fraction"] < 1:
            problems.append(f"train_fraction must be between 0 and 1, got {s['train_fraction']}")
        if s["num_workers"] < 0:
            problems.append(f"num_workers must be 0 or more, got {s['num_workers']}")
        if s["test_stride"] is not None and not 1 <= s["test_stride"] <= s["block_size"]:
            problems.append(f"test_stride must be between 1 and block_size ({s['block_size']}), got {s['test_stride']}")
        return problems

    def prepare_data(self) -> None:
        """Download tiny-shakespeare when it is the corpus, and encode the corpus into its token cache unless it
        is there already (Lightning calls this once per machine, before setup on every rank)."""
        hp = self.hparams
        if hp.path is None:
            ensure_shakespeare(hp.cache_dir, hp.url, hp.sha256)
        self._load()

    def _load(self) -> Tokens:
        if self._tokens is None:
            hp = self.hparams
            path = hp.path if hp.path is not None else Path(hp.cache_dir) / SHAKESPEARE_FILE
            self._tokens = load_tokens(corpus_files(path), hp.tokenizer, hp.cache_dir, hp.strict_utf8)
            self.tokenizer = make_tokenizer(hp.tokenizer, self._tokens.vocab)
        return self._tokens

    @property
    def vocab(self) -> str:
        """The vocabulary of the prepared corpus, as the characters in id order (byte b is chr(b))."""
        return self._load().vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_data"):
            return
        hp = self.hparams
        data = self._load().ids
        n = int(hp.train_fraction * len(data))
        self.train_data, self.val_data = data[:n], data[n:]
        for split, part in (("training", self.train_data), ("validation", self.val_data)):
            if len(part) < hp.block_size + 1:
                raise UserError(
                    f"the {split} split has {len(part)} tokens, fewer than block_size + 1 = {hp.block_size + 1}: "
                    f"use a longer text, a smaller --data.block_size or another --data.train_fraction"
                )
        generator = torch.Generator().manual_seed(hp.val_seed)
        x, y = draw_blocks(self.val_data, hp.block_size, hp.val_batches * hp.batch_size, generator)
        shape = (hp.val_batches, hp.batch_size, hp.block_size)
        self.val_set = FixedBatches(x.view(shape), y.view(shape))

    def _loader(self, dataset: Dataset, num_workers: int) -> DataLoader:
        # a private generator: creating the loader's iterator must not consume the global RNG, or resuming a run
        # would shift every later dropout mask
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator(),
        )

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        hp = self.hparams
        stream = BlockStream(self.train_data, hp.block_size, hp.batch_size, hp.seed, rank, start=self.batches_drawn)
        return self._loader(stream, hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, 0)

    def test_dataloader(self) -> DataLoader:
        hp = self.hparams
        ids = self.val_data
        if hp.test_path is not None:
            ids = self._test_ids(hp.test_path)
        windows = ScoredWindows(ids, hp.block_size, hp.test_stride or max(hp.block_size // 2, 1))
        return DataLoader(windows, batch_size=hp.batch_size, num_workers=hp.num_workers)

    def _test_ids(self, path: str) -> torch.Tensor:
        """The tokens of ``path`` in the training corpus's vocabulary, through the token cache like any corpus:
        memory-mapped when the two vocabularies are the same, else translated into a byte (or four) per token."""
        hp = self.hparams
        flag = "--data.test_path"
        tokens = load_tokens(corpus_files(path, flag), hp.tokenizer, hp.cache_dir, hp.strict_utf8, flag)
        if len(tokens.ids) < 2:
            raise UserError(f"--data.test_path {path} has no text to score: give it at least two characters")
        return translate(tokens.ids, tokens.vocab, self.tokenizer.vocab, f"--data.test_path {path}")

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if self.trainer is not None and self.trainer.training:
            self.batches_drawn += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_drawn": self.batches_drawn}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.batches_drawn = int(state_dict["batches_drawn"])
