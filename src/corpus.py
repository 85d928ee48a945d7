"""Getting the text: a checksum-verified download of tiny-shakespeare, and a careful read of any UTF-8 file.

A download lands in a temporary file beside its destination and is renamed into place only once its SHA-256
matches, so an interrupted or corrupted download is never used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from src.errors import UserError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = "tinyshakespeare/input.txt"  # inside the data module's cache_dir


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verifying ``sha256`` (when given) before the file appears."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise UserError(
                f"the download from {url} has SHA-256 {digest.hexdigest()}, expected {sha256}; it was discarded. "
                f"Fetch the file yourself to {dest}, or train on your own text with --data.path FILE"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as err:
        raise UserError(
            f"could not download {url} ({err}). Put the file at {dest} yourself, "
            f"or train on your own text with --data.path FILE"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
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


def read_text(path: str | Path) -> str:
    """The whole file as text, with a clear error for anything that is not a non-empty UTF-8 file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"corpus file {path} does not exist: pass an existing UTF-8 text file with --data.path")
    if path.is_dir():
        raise UserError(f"corpus path {path} is a directory: pass a UTF-8 text file inside it with --data.path")
    raw = path.read_bytes()
    if not raw:
        raise UserError(f"corpus file {path} is empty: pass a non-empty UTF-8 text file with --data.path")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"corpus file {path} is not UTF-8 (byte {err.object[err.start]:#04x} at offset {err.start}): "
            f"convert it, e.g. with `iconv -t utf-8`, and pass it with --data.path"
        ) from None
