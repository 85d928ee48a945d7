"""The token cache: encoded once, keyed by content, never half-written, memory-mapped by every rank."""

import json

import numpy as np
import pytest
import torch

import src.data.token_cache
from src.data.corpus import FILE_SEPARATOR, corpus_files
from src.data.token_cache import load_tokens, read_segment, segments
from src.data.tokenizer import CharTokenizer
from src.errors import UserError
from tests.helpers import run_cli, tiny_args


def cached(cache_dir) -> list[str]:
    return sorted(p.name for p in (cache_dir / "tokens").iterdir())


def test_ids_are_the_tokenizers_and_as_compact_as_the_vocabulary(tmp_path):
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("hello world\n")
    large.write_text("".join(chr(0x4E00 + i) for i in range(300)) * 2)
    tokens = load_tokens([small], "chars", tmp_path / "cache")
    assert tokens.vocab == "\n dehlorw"  # sorted by code point, as the lecture's sorted(set(text))
    assert tokens.ids.dtype == torch.uint8
    assert tokens.ids.tolist() == CharTokenizer(tokens.vocab).encode("hello world\n")
    big = load_tokens([large], "chars", tmp_path / "cache")
    assert big.ids.dtype == torch.uint16 and len(big.vocab) == 300
    assert CharTokenizer(big.vocab).decode(big.ids.tolist()) == large.read_text()


def test_tiny_shakespeare_gives_exactly_the_ids_of_encoding_it_whole(shakespeare, tmp_path):
    text = shakespeare.read_text(encoding="utf-8")
    tokenizer = CharTokenizer.from_text(text)
    tokens = load_tokens([shakespeare], "chars", tmp_path)
    assert tokens.vocab == tokenizer.vocab
    assert torch.equal(tokens.ids, torch.tensor(tokenizer.encode(text), dtype=torch.uint8))


def test_an_edited_corpus_is_encoded_again_and_the_stale_cache_never_read(tmp_path):
    corpus, cache = tmp_path / "c.txt", tmp_path / "cache"
    corpus.write_text("abcabc\n")
    first = load_tokens([corpus], "chars", cache)
    corpus.write_text("abcabz\n")  # same size, one character changed
    second = load_tokens([corpus], "chars", cache)
    assert second.vocab == "\nabcz" and first.vocab == "\nabc"
    assert CharTokenizer(second.vocab).decode(second.ids.tolist()) == "abcabz\n"
    assert len(cached(cache)) == 4  # two caches, each a .bin and its .json


def test_an_interrupted_encode_leaves_no_cache_that_counts(tmp_path, monkeypatch):
    corpus, cache = tmp_path / "c.txt", tmp_path / "cache"
    corpus.write_text("to be or not to be\n" * 100)
    write_segment = src.data.token_cache.write_segment

    def cut_short(task):
        write_segment(task)
        raise KeyboardInterrupt  # Ctrl-C (or a crash) once ids are on disk, before the manifest

    monkeypatch.setattr(src.data.token_cache, "write_segment", cut_short)
    with pytest.raises(KeyboardInterrupt):
        load_tokens([corpus], "chars", cache)
    assert cached(cache) == []  # nothing left behind, not even the temporary file
    monkeypatch.undo()
    # what a kill -9 could leave: a temporary file and an ids file without its manifest
    key = src.data.token_cache.cache_key([corpus], "chars")
    (cache / "tokens" / f"{key}.bin").write_bytes(b"\0\0\0")
    (cache / "tokens" / f".{key}.x.bin.tmp").write_bytes(b"\0")
    tokens = load_tokens([corpus], "chars", cache)
    assert CharTokenizer(tokens.vocab).decode(tokens.ids.tolist()) == corpus.read_text()


def test_segments_split_no_character_and_errors_give_file_offsets(tmp_path, monkeypatch):
    monkeypatch.setattr(src.data.token_cache, "CHUNK_BYTES", 3)  # many segments, encoded by a pool of processes
    text = "héllo wörld ✓ 日本 🎉\n" * 5
    path = tmp_path / "u.txt"
    path.write_text(text)
    assert b"".join(read_segment(path, a, b).decode().encode() for a, b in segments(path)) == text.encode()
    tokens = load_tokens([path], "chars", tmp_path / "cache")
    assert CharTokenizer(tokens.vocab).decode(tokens.ids.tolist()) == text
    bad = tmp_path / "bad.txt"
    bad.write_bytes("aé".encode() * 10 + b"\xff" + b"tail")
    with pytest.raises(UserError, match=r"bad.txt is not UTF-8 \(byte 0xff at offset 30\)"):
        load_tokens([bad], "chars", tmp_path / "cache")
    cut = tmp_path / "cut.txt"
    cut.write_bytes("abc日".encode()[:-1])
    with pytest.raises(UserError, match="cut.txt is not UTF-8 \\(it ends inside a character\\)"):
        load_tokens([cut], "chars", tmp_path / "cache")


def test_bytes_tokenizer_stores_the_utf8_bytes(tmp_path):
    path = tmp_path / "u.txt"
    path.write_text("naïve 🎉\n")
    tokens = load_tokens([path], "bytes", tmp_path / "cache")
    assert tokens.ids.dtype == torch.uint8 and len(tokens.vocab) == 256
    assert bytes(tokens.ids.tolist()) == "naïve 🎉\n".encode()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.txt").write_text("second file\n")
    (root / "a.txt").write_text("first file\n")
    (root / "sub" / "c.txt").write_text("third, in a subfolder\n")
    (root / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (root / ".git" / "HEAD").write_text("hidden: never read\n")
    return root


def test_a_folder_is_its_utf8_files_in_order_and_the_rest_is_skipped_with_a_warning(folder, tmp_path, capsys):
    files = corpus_files(folder)
    assert [p.relative_to(folder).as_posix() for p in files] == ["a.txt", "b.txt", "latin1.txt", "sub/c.txt"]
    tokens = load_tokens(files, "chars", tmp_path / "cache")
    text = CharTokenizer(tokens.vocab).decode(tokens.ids.tolist())
    assert text == FILE_SEPARATOR.join(["first file\n", "second file\n", "third, in a subfolder\n"])
    assert tokens.skipped == [str(folder / "latin1.txt")]
    err = capsys.readouterr().err
    assert f"skipped 1 file(s) that are not UTF-8: {folder / 'latin1.txt'}" in err
    manifest = json.loads(next((tmp_path / "cache" / "tokens").glob("*.json")).read_text())
    assert manifest["skipped"] == tokens.skipped


def test_strict_refuses_a_folder_with_a_file_that_is_not_utf8(folder, tmp_path, capsys):
    with pytest.raises(UserError, match=r"latin1.txt is not UTF-8 \(byte 0xe9 at offset 3\).*--data.strict_utf8"):
        load_tokens(corpus_files(folder), "chars", tmp_path / "cache", strict=True)
    load_tokens(corpus_files(folder), "chars", tmp_path / "cache")  # cached, skipping the file
    load_tokens(corpus_files(folder), "chars", tmp_path / "cache")  # from the cache: the warning again
    assert capsys.readouterr().err.count("skipped 1 file(s) that are not UTF-8") == 2
    with pytest.raises(
        UserError, match="--data.strict_utf8: 1 corpus file.*latin1.txt"
    ):  # the cache does not bypass it
        load_tokens(corpus_files(folder), "chars", tmp_path / "cache", strict=True)


def test_a_glob_names_files(folder):
    assert [p.name for p in corpus_files(folder / "**" / "*.txt")] == ["a.txt", "b.txt", "latin1.txt", "c.txt"]
    with pytest.raises(UserError, match="the glob matches no file"):
        corpus_files(folder / "*.md")


@pytest.mark.slow
def test_two_ddp_ranks_encode_the_corpus_once(workdir, tiny_corpus):
    args = tiny_args(tiny_corpus, max_steps=4, **{"trainer.devices": 2, "trainer.strategy": "ddp"})
    result = run_cli("fit", *args, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("chargpt: encoded") == 1
    assert len(cached(workdir / "data")) == 2  # one .bin and its .json


def test_memory_mapped_ids_stay_on_disk(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("abc" * 1000)
    tokens = load_tokens([path], "chars", tmp_path / "cache")
    assert isinstance(tokens.ids.numpy(), np.ndarray) and tokens.ids.numpy().base is not None
    assert not tokens.ids.numpy().flags.owndata  # a view of the mapped file, not a copy in memory


def test_files_with_no_text_at_all_are_refused(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / "empty" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "empty" / name).write_text("")
    with pytest.raises(UserError, match="holds no text"):
        load_tokens(corpus_files(tmp_path / "empty"), "chars", tmp_path / "cache")


@pytest.mark.slow
def test_encoding_in_spawned_workers_gives_the_same_bytes(tmp_path, monkeypatch):
    """Windows and macOS start pool workers with spawn (and Linux from Python 3.14, forkserver): a worker inherits
    nothing from this process, so everything it needs must travel in its task."""
    text = "héllo wörld ✓ 日本 🎉\nFirst Citizen: speak.\n" * 40
    path = tmp_path / "u.txt"
    path.write_text(text)
    monkeypatch.setattr(src.data.token_cache, "CHUNK_BYTES", 500)  # several segments, so the pool is used
    assert len(segments(path)) > 2
    monkeypatch.setattr(src.data.token_cache.os, "cpu_count", lambda: 1)
    in_process = load_tokens([path], "chars", tmp_path / "one")
    monkeypatch.setattr(src.data.token_cache, "START_METHOD", "spawn")
    monkeypatch.setattr(src.data.token_cache.os, "cpu_count", lambda: 2)
    spawned = load_tokens([path], "chars", tmp_path / "spawn")
    assert spawned.vocab == in_process.vocab
    key = next((tmp_path / "spawn" / "tokens").glob("*.bin")).name
    assert (tmp_path / "spawn" / "tokens" / key).read_bytes() == (tmp_path / "one" / "tokens" / key).read_bytes()
    assert CharTokenizer(spawned.vocab).decode(spawned.ids.tolist()) == text


def damage(cache, kind: str, other_bin: bytes) -> None:
    """What a bad copy, a full disk or an edit by hand leaves of a token cache."""
    ids, manifest = next(cache.glob("*.bin")), next(cache.glob("*.json"))
    if kind == "truncated":
        ids.write_bytes(ids.read_bytes()[: ids.stat().st_size // 2])
    elif kind == "bad manifest":
        manifest.write_text('{"format": 1, "dtype": "uint8", "tok')
    elif kind == "ids outside the vocabulary":
        with open(ids, "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 10)
    elif kind == "another corpus's ids":
        ids.write_bytes(other_bin)


DAMAGE = {
    "truncated": "bytes, not the",
    "bad manifest": "manifest (.json) that does not parse",
    "ids outside the vocabulary": "does not match its checksum",
    "another corpus's ids": "does not match its checksum",
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_cache_is_encoded_again_with_a_notice(tmp_path, capsys, kind):
    corpus, other = tmp_path / "c.txt", tmp_path / "o.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 50)
    other.write_text(corpus.read_text()[::-1])  # as long, the same characters, other ids
    load_tokens([other], "chars", tmp_path / "other")
    other_bin = next((tmp_path / "other" / "tokens").glob("*.bin")).read_bytes()
    cache = tmp_path / "cache" / "tokens"
    load_tokens([corpus], "chars", tmp_path / "cache")
    damage(cache, kind, other_bin)
    capsys.readouterr()
    tokens = load_tokens([corpus], "chars", tmp_path / "cache")
    err = capsys.readouterr().err
    assert f"chargpt: token cache {next(cache.glob('*.bin'))} " in err and DAMAGE[kind] in err
    assert "encoding the corpus again" in err
    assert CharTokenizer(tokens.vocab).decode(tokens.ids.tolist()) == corpus.read_text()
    load_tokens([corpus], "chars", tmp_path / "cache")  # healed: the next start is quiet
    assert "token cache" not in capsys.readouterr().err


def test_ids_outside_the_vocabulary_are_refused_even_with_a_matching_checksum(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabc\n")
    load_tokens([corpus], "chars", tmp_path)
    ids = next((tmp_path / "tokens").glob("*.bin"))
    manifest = next((tmp_path / "tokens").glob("*.json"))
    ids.write_bytes(b"\x00\x01\x09\x02\x00\x01\x03")
    meta = json.loads(manifest.read_text())
    # a forged manifest: only the id bound can tell
    meta["crc32"], _ = src.data.token_cache.crc32_and_largest(ids, np.dtype(meta["dtype"]))
    assert src.data.token_cache.check_ids(ids, meta) == "holds id 9, outside the vocabulary of 4"


@pytest.mark.slow
def test_a_fit_on_a_damaged_cache_heals_it_and_trains(workdir, tiny_corpus, capsys):
    from src.train import main

    main(["fit", *tiny_args(tiny_corpus, max_steps=2, run_name="a")])
    damage(workdir / "data" / "tokens", "ids outside the vocabulary", b"")
    main(["fit", *tiny_args(tiny_corpus, max_steps=4, run_name="b")])
    assert "does not match its checksum (damaged, or another corpus's file): encoding the corpus again" in (
        capsys.readouterr().err
    )
    assert (workdir / "lightning_logs/b/checkpoints/last.ckpt").exists()
