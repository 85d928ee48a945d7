"""Getting the text: a checksum-verified download of tiny-shakespeare, and the files a ``--data.path`` names.

A download (``torch.hub.download_url_to_file``) lands in a temporary file beside its destination and is moved into
place only once its SHA-256 matches, so an interrupted or corrupted download is never used. A corpus is one file,
a folder (its files, recursively, hidden ones aside) or a glob; files are read in sorted order, in chunks, and
joined with ``FILE_SEPARATOR``. ``src.data.token_cache`` reads them as UTF-8 and skips (or, strictly, refuses) files
that are not.
"""

from __future__ import annotations

import glob
import hashlib
import os
import urllib.error
from collections.abc import Iterator
from pathlib import Path

from src.errors import UserError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = "tinyshakespeare/input.txt"  # inside the data module's cache_dir
FILE_SEPARATOR = "\n\n"  # between the files of a folder or a glob
CHUNK_BYTES = 16 << 20  # what a corpus is read in: memory stays bounded whatever its size


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None) -> Path:
    """Fetch ``url`` to ``dest`` with ``torch.hub.download_url_to_file``: into a temporary file beside ``dest``,
    checked against ``sha256`` (when given) before it is moved into place, so a bad download never appears."""
    from torch.hub import download_url_to_file

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(url, str(dest), hash_prefix=sha256, progress=False)
    except RuntimeError as err:  # torch.hub's hash mismatch; the partial file is already gone
        raise UserError(
            f"the download from {url} failed its SHA-256 check ({err}); it was discarded. "
            f"Fetch the file yourself to {dest}, or train on your own text with --data.path FILE"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise UserError(
            f"could not download {url} ({err}). Put the file at {dest} yourself, "
            f"or train on your own text with --data.path FILE"
        ) from None
    return dest


def ensure_shakespeare(cache_dir: str | Path, url: str = SHAKESPEARE_URL, sha256: str = SHAKESPEARE_SHA256) -> Path:
    """The cached tiny-shakespeare file, downloaded on first use; a cached copy that fails the checksum is refused."""
    path = Path(cache_dir) / SHAKESPEARE_FILE
    if not path.exists():
        return download(url, path, sha256)
    if path.is_file() and sha256_of(path) != sha256:
        raise UserError(
            f"{path} does not match tiny-shakespeare's SHA-256 {sha256} (a damaged download?). "
            f"Delete it to download it again, or pass it as your own corpus with --data.path {path}"
        )
    return path


def corpus_files(path: str | Path, flag: str = "--data.path") -> list[Path]:
    """The files of the corpus at ``path``: the file itself, every file under a folder (hidden files and folders
    aside), or every file a glob matches, in sorted order. Errors name ``flag``, the option that gave ``path``."""
    path = Path(path)
    if path.is_file():
        if path.stat().st_size == 0:
            raise UserError(f"corpus file {path} is empty: pass a non-empty UTF-8 text file with {flag}")
        return [path]
    if path.is_dir():
        hidden = lambda p: any(part.startswith(".") for part in p.relative_to(path).parts)  # noqa: E731
        files = sorted(p for p in path.rglob("*") if p.is_file() and not hidden(p))
        if not files:
            raise UserError(f"corpus path {path} is a directory with no files in it: pass text files with {flag}")
        return files
    if any(c in str(path) for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if os.path.isfile(p))
        if not files:
            raise UserError(f"{flag} {path}: the glob matches no file")
        return files
    raise UserError(f"corpus file {path} does not exist: pass an existing UTF-8 text file, folder or glob with {flag}")


def read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK_BYTES), b"")


class NotUTF8(ValueError):
    """A file of the corpus that is not UTF-8, and where it stops being so."""

    def __init__(self, path: Path, offset: int, byte: int | None) -> None:
        self.path = path
        where = f"byte {byte:#04x} at offset {offset}" if byte is not None else "it ends inside a character"
        super().__init__(f"{path} is not UTF-8 ({where})")
