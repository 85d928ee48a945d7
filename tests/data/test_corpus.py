"""Getting the text: checksum-verified, atomic downloads (from a local server: no test touches the network)."""

import functools
import http.server
import threading

import pytest

from src.data.corpus import SHAKESPEARE_FILE, download, ensure_shakespeare, sha256_of
from src.errors import UserError


@pytest.fixture
def served(tmp_path):
    """A local HTTP server for tmp_path/www (no test touches the network)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_and_places_the_file(served, tmp_path):
    root, base = served
    (root / "input.txt").write_text("hello shakespeare\n")
    digest = sha256_of(root / "input.txt")
    cache = tmp_path / "cache"
    path = ensure_shakespeare(cache, url=f"{base}/input.txt", sha256=digest)
    assert path == cache / SHAKESPEARE_FILE and path.read_text() == "hello shakespeare\n"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_download_from_a_file_url(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_text("some text\n")
    dest = download(src.as_uri(), tmp_path / "out" / "input.txt", sha256_of(src))
    assert dest.read_text() == "some text\n"


def test_corrupted_download_is_rejected_and_never_used(served, tmp_path):
    root, base = served
    (root / "input.txt").write_text("tampered\n")
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match='failed its SHA-256 check .*expected "00') as err:
        ensure_shakespeare(cache, url=f"{base}/input.txt", sha256="00" * 32)
    assert "--data.path" in str(err.value)
    assert not (cache / SHAKESPEARE_FILE).exists()
    assert list((cache / SHAKESPEARE_FILE).parent.iterdir()) == []


def test_offline_download_says_where_to_put_the_file(tmp_path):
    with pytest.raises(UserError, match="could not download") as err:
        ensure_shakespeare(tmp_path, url="http://127.0.0.1:9/input.txt", sha256="00" * 32)
    assert str(tmp_path / SHAKESPEARE_FILE) in str(err.value) and "--data.path" in str(err.value)
