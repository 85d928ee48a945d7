"""The token cache: a corpus encoded once, in chunks, into a compact binary file that every run and rank memory-maps.

``<cache_dir>/tokens/<key>.bin`` holds the token ids (uint8 for up to 256 symbols, else uint16 or uint32) and
``<key>.json`` the vocabulary and what was read. The key is a SHA-256 of the corpus's bytes (each file, in order,
with its size) and of the tokenizer, so an edited corpus gets a new cache and a stale one is never read. Both files
are written under temporary names and renamed, the manifest last: an encoding cut short leaves no cache that counts.
The manifest records the ids file's CRC-32, checked at every start with the largest id: a cache damaged on disk is
encoded again, never read. Memory stays bounded whatever the corpus size: nothing holds more than one chunk at a time.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.data.corpus import CHUNK_BYTES, FILE_SEPARATOR, NotUTF8, read_chunks
from src.data.tokenizer import ByteTokenizer
from src.errors import UserError

FORMAT = 1
UNICODE = 0x110000  # code points


@dataclass
class Tokens:
    """An encoded corpus: ``ids`` (memory-mapped, read-only in effect) and the vocabulary they index."""

    ids: torch.Tensor
    vocab: str
    skipped: list[str]  # files left out because they are not UTF-8


class Progress:
    """One stderr line every few seconds for work that takes that long; silent for anything quicker."""

    def __init__(self, what: str, total: int, every: float = 3.0) -> None:
        self.what, self.total, self.every = what, max(total, 1), every
        self.start = self.last = time.monotonic()
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / (now - self.start) / 1e6
            print(f"chargpt: {self.what}: {self.done / self.total:.0%} ({rate:.0f} MB/s)", file=sys.stderr, flush=True)


def cache_key(files: list[Path], tokenizer: str) -> str:
    digest = hashlib.sha256(f"chargpt tokens {FORMAT} {tokenizer} {FILE_SEPARATOR!r}".encode())
    progress = Progress("checking the corpus against its token cache", sum(f.stat().st_size for f in files))
    for path in files:
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        for chunk in read_chunks(path):
            digest.update(chunk)
            progress.advance(len(chunk))
    return digest.hexdigest()


def load_tokens(
    files: list[Path], tokenizer: str, cache_dir: str | Path, strict: bool = False, flag: str = "--data.path"
) -> Tokens:
    """The corpus's tokens, from its cache, encoding it first if it has none; errors name ``flag``, the option that
    gave the files."""
    stem = Path(cache_dir) / "tokens" / cache_key(files, tokenizer)
    meta, problem = read_manifest(stem)
    if meta is not None and problem is None:
        problem = check_ids(stem.with_suffix(".bin"), meta)
    if meta is None or problem is not None:
        if problem is not None:  # derived data: rebuilt, never trusted
            print(
                f"chargpt: token cache {stem.with_suffix('.bin')} {problem}: encoding the corpus again", file=sys.stderr
            )
        encode(files, tokenizer, stem, strict, flag)
        meta, problem = read_manifest(stem)
        if meta is None or problem is not None:
            raise UserError(f"the token cache in {stem.parent} cannot be written back readable: check the disk")
    if meta["skipped"]:  # every run says so, and --data.strict_utf8 refuses a cache made without it
        count, shown = len(meta["skipped"]), ", ".join(meta["skipped"][:10])
        shown += f" and {count - 10} more" if count > 10 else ""
        if strict:
            raise UserError(
                f"--data.strict_utf8: {count} corpus file(s) are not UTF-8: {shown}; convert them with iconv"
            )
        print(f"chargpt: warning: skipped {count} file(s) that are not UTF-8: {shown}", file=sys.stderr)
    # copy-on-write: a writable array for torch, while the file itself is never written
    ids = np.memmap(stem.with_suffix(".bin"), dtype=meta["dtype"], mode="c", shape=(meta["tokens"],))
    return Tokens(torch.from_numpy(ids), meta["vocab"], meta["skipped"])


def read_manifest(stem: Path) -> tuple[dict | None, str | None]:
    """The cache's manifest (None when there is none yet), and what is wrong with it (None when nothing is)."""
    try:
        meta = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError):
        return {}, "has a manifest (.json) that does not parse"
    fields = ("format", "dtype", "tokens", "vocab", "skipped", "crc32")
    if not isinstance(meta, dict) or any(key not in meta for key in fields):
        return {}, "has a manifest without a checksum (an older chargpt wrote it, or it is damaged)"
    if meta["format"] != FORMAT:
        return {}, f"is in format {meta['format']}, this chargpt reads {FORMAT}"
    return meta, None


def check_ids(path: Path, meta: dict) -> str | None:
    """What is wrong with the ids file, or None: its size, its CRC-32 and its largest id against the manifest, in
    one pass. A checksum, not a cryptographic hash: it guards against damage, not forgery, at a third of SHA-256's
    cost; the id bound keeps out ids the model has no row for whatever the checksum says."""
    dtype = np.dtype(meta["dtype"])
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if size != meta["tokens"] * dtype.itemsize:
        return f"is {size:,} bytes, not the {meta['tokens'] * dtype.itemsize:,} its manifest records (truncated?)"
    crc, largest = crc32_and_largest(path, dtype)
    if crc != meta["crc32"]:
        return "does not match its checksum (damaged, or another corpus's file)"
    if largest >= len(meta["vocab"]):
        return f"holds id {largest}, outside the vocabulary of {len(meta['vocab'])}"
    return None


def crc32_and_largest(path: Path, dtype: np.dtype) -> tuple[int, int]:
    """The CRC-32 of the ids file and its largest id, in one pass of ``CHUNK_BYTES`` reads."""
    crc, largest = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
            largest = max(largest, int(np.frombuffer(chunk, dtype=dtype).max()))
    return crc, largest


def encode(files: list[Path], tokenizer: str, stem: Path, strict: bool, flag: str = "--data.path") -> None:
    """Write ``stem``.bin and ``stem``.json for the corpus: one pass to check the text and find its characters, one
    to write the ids. Each pass works on segments of the files, in a pool of processes as wide as the machine."""
    started = time.monotonic()
    tasks = [(path, start, end, tokenizer) for path in files for start, end in segments(path)]
    skipped, present = set(), np.zeros(UNICODE, dtype=bool)  # present: which code points occur
    counts: dict[tuple[Path, int], int] = {}  # tokens of each segment
    progress = Progress("reading the corpus", sum(f.stat().st_size for f in files))
    for (path, start, end, _), (tokens, found, error) in zip(tasks, parallel_map(scan, tasks)):
        progress.advance(end - start)
        if error is not None:
            if strict or len(files) == 1:
                problem = NotUTF8(path, *error)
                raise UserError(
                    f"corpus file {problem}: convert it, e.g. with `iconv -t utf-8`, and pass it with {flag}"
                    + (", or leave --data.strict_utf8 off to skip it" if len(files) > 1 else "")
                )
            skipped.add(path)
        counts[path, start] = tokens
        present[found] = True
    kept = [path for path in files if path not in skipped]
    if not kept:
        raise UserError(f"no UTF-8 text among the {len(files)} corpus files ({', '.join(map(str, files[:5]))}...)")
    if sum(counts[path, start] for path, start, *_ in tasks if path not in skipped) == 0:
        raise UserError(f"the corpus ({len(kept)} file(s) from {flag}) holds no text: pass non-empty files")
    if len(kept) > 1:
        present[code_points(FILE_SEPARATOR)] = True

    if tokenizer == "bytes":
        vocab, occurring, dtype = ByteTokenizer.vocab, None, np.dtype(np.uint8)
    else:
        occurring = np.flatnonzero(present).astype(np.uint32)
        vocab = "".join(map(chr, occurring))  # sorted by code point, as sorted(set(text)) is
        dtype = np.dtype(np.uint8 if len(vocab) <= 256 else np.uint16 if len(vocab) <= 65536 else np.uint32)
    separator = ids_of(FILE_SEPARATOR, lookup_table(occurring, dtype))
    # where each segment's ids go, with a separator between files
    writes, separators, offset = [], [], 0
    for i, path in enumerate(kept):
        if i:
            separators.append(offset)
            offset += len(separator)
        for task in tasks:
            if task[0] == path:
                writes.append((*task[:3], offset * dtype.itemsize))
                offset += counts[path, task[1]]

    stem.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=f".{stem.name}.", suffix=".bin.tmp")
    try:
        with os.fdopen(fd, "r+b") as f:  # positioned writes through a file object: the same calls on every OS
            f.truncate(offset * dtype.itemsize)
            for at in separators:
                f.seek(at * dtype.itemsize)
                f.write(separator.tobytes())
        progress = Progress("encoding the corpus", sum(end - start for _, start, end, _ in writes))
        jobs = [(*w, tmp, occurring, dtype.name) for w in writes]
        for (_, start, end, _), _ in zip(writes, parallel_map(write_segment, jobs)):
            progress.advance(end - start)
        checksum, _ = crc32_and_largest(Path(tmp), dtype)
        os.replace(tmp, stem.with_suffix(".bin"))
        meta = {"format": FORMAT, "tokenizer": tokenizer, "dtype": dtype.name, "tokens": offset, "vocab": vocab}
        meta["crc32"] = checksum
        meta |= {"files": [str(p) for p in kept], "skipped": [str(p) for p in files if p in skipped]}
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False)
        os.replace(tmp, stem.with_suffix(".json"))  # last: from here on the cache counts
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    size = sum(p.stat().st_size for p in kept)
    print(
        f"chargpt: encoded {len(kept)} file(s), {size / 1e6:.1f} MB, into {offset:,} tokens of a vocabulary of "
        f"{len(vocab):,} in {time.monotonic() - started:.1f} s: {stem.with_suffix('.bin')}",
        file=sys.stderr,
    )


def segments(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of about ``CHUNK_BYTES`` that cover the file and start on UTF-8 character boundaries."""
    size, bounds = path.stat().st_size, [0]
    with open(path, "rb") as f:
        for pos in range(CHUNK_BYTES, size, CHUNK_BYTES):
            f.seek(pos)
            head = f.read(4)  # a character is at most 4 bytes: skip the continuation bytes (10xxxxxx)
            pos += next((i for i, b in enumerate(head) if b & 0xC0 != 0x80), len(head))
            if pos > bounds[-1]:
                bounds.append(pos)
    return [(a, b) for a, b in zip(bounds, bounds[1:] + [size]) if b > a]


def read_segment(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def scan(task: tuple[Path, int, int, str]) -> tuple[int, np.ndarray, tuple[int, int | None] | None]:
    """A segment's number of tokens, the code points in it, and where it stops being UTF-8 (None if it is not):
    the offset in the file and the byte there (None when the file ends inside a character)."""
    path, start, end, tokenizer = task
    raw = read_segment(path, start, end)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        byte = raw[err.start] if err.reason != "unexpected end of data" else None
        return 0, np.zeros(0, dtype=np.int64), (start + err.start, byte)
    if tokenizer == "bytes":
        return len(raw), np.zeros(0, dtype=np.int64), None
    present = np.zeros(UNICODE, dtype=bool)
    present[code_points(text)] = True  # a scatter: much faster than a bincount
    return len(text), np.flatnonzero(present), None


def lookup_table(occurring: np.ndarray | None, dtype: np.dtype) -> np.ndarray | None:
    """Code point -> id for the characters tokenizer (``occurring``: its vocabulary's code points, sorted); None for
    the bytes tokenizer, whose ids are the UTF-8 bytes."""
    if occurring is None:
        return None
    table = np.zeros(UNICODE, dtype=dtype)
    table[occurring] = np.arange(len(occurring), dtype=dtype)
    return table


def write_segment(task: tuple[Path, int, int, int, str, np.ndarray | None, str]) -> None:
    """Encode one segment and write its ids at byte ``at`` of ``out``. Everything it needs comes in ``task`` (the
    vocabulary as code points, not a table: a few KB to send instead of 1-4 MB), so it runs in a spawned worker."""
    path, start, end, at, out, occurring, dtype = task
    raw = read_segment(path, start, end)
    lookup = lookup_table(occurring, np.dtype(dtype))
    ids = np.frombuffer(raw, dtype=np.uint8) if lookup is None else lookup[code_points(raw.decode("utf-8"))]
    with open(out, "r+b") as f:
        f.seek(at)
        f.write(ids.tobytes())


START_METHOD: str | None = None  # the pool's start method; None: the platform's (spawn on Windows and macOS)


def parallel_map(fn, tasks: list) -> Iterator:
    """``map`` over a pool of processes (one per core), in order; in this process for a single task. The workers
    share nothing with this process but their arguments, so any start method works: fork, forkserver or spawn."""
    workers = min(os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        yield from map(fn, tasks)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(START_METHOD)) as pool:
        yield from pool.map(fn, tasks)


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def ids_of(text: str, lookup: np.ndarray | None) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8) if lookup is None else lookup[code_points(text)]
