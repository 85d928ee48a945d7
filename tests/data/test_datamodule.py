import itertools
from types import SimpleNamespace

import pytest
import torch

from src.data.corpus import SHAKESPEARE_FILE
from src.data.datamodule import CharDataModule, ScoredWindows
from src.errors import UserError


def make_dm(path, **kwargs) -> CharDataModule:
    kwargs = {"block_size": 8, "batch_size": 4, "val_batches": 3, "cache_dir": str(path.parent / "cache"), **kwargs}
    dm = CharDataModule(path=str(path), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def take(dm: CharDataModule, n: int, rank: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dm.trainer = SimpleNamespace(global_rank=rank, training=True)  # what the data module reads of a Trainer
    return list(itertools.islice(iter(dm.train_dataloader()), n))


def same(a, b) -> bool:
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


def test_real_corpus_split_sizes(shakespeare):
    dm = make_dm(shakespeare)
    assert (len(dm.train_data), len(dm.val_data)) == (1_003_854, 111_540)
    assert dm.vocab_size == 65
    assert dm.train_data.dtype == torch.uint8  # one compact tensor


def test_split_is_in_order_and_follows_the_fraction(tiny_corpus):
    dm = make_dm(tiny_corpus, train_fraction=0.8)
    text = tiny_corpus.read_text()
    n = int(0.8 * len(text))
    assert dm.tokenizer.decode(dm.train_data.tolist()) == text[:n]
    assert dm.tokenizer.decode(dm.val_data.tolist()) == text[n:]


def test_batches_are_blocks_of_the_text_with_targets_one_ahead(tiny_corpus):
    dm = make_dm(tiny_corpus, block_size=16, batch_size=5)
    train_text = dm.tokenizer.decode(dm.train_data.tolist())
    for x, y in take(dm, 3):
        assert x.shape == y.shape == (5, 16) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x, y):
            block = dm.tokenizer.decode(row_x.tolist()) + dm.tokenizer.decode(row_y[-1:].tolist())
            assert block in train_text


def test_same_seed_same_stream_other_seed_other_stream(tiny_corpus):
    a = take(make_dm(tiny_corpus, seed=7), 5)
    b = take(make_dm(tiny_corpus, seed=7), 5)
    c = take(make_dm(tiny_corpus, seed=8), 5)
    assert same(a, b)
    assert not same(a, c)


def test_ranks_draw_different_blocks(tiny_corpus):
    dm = make_dm(tiny_corpus)
    rank0, rank1 = take(dm, 5, rank=0), take(dm, 5, rank=1)
    assert not any(torch.equal(x0, x1) for (x0, _), (x1, _) in zip(rank0, rank1))


def test_resuming_continues_the_stream_exactly(tiny_corpus):
    uninterrupted = take(make_dm(tiny_corpus), 10)
    first = make_dm(tiny_corpus)
    first.batches_drawn = 4  # what on_before_batch_transfer counts while training
    state = first.state_dict()
    resumed = make_dm(tiny_corpus)
    resumed.load_state_dict(state)
    assert same(take(resumed, 6), uninterrupted[4:])


def test_batches_drawn_while_training_are_counted(tiny_corpus):
    dm = make_dm(tiny_corpus)
    dm.trainer = SimpleNamespace(global_rank=0, training=True)
    for batch in take(dm, 3):
        dm.on_before_batch_transfer(batch, 0)
    dm.trainer.training = False  # validation batches do not move the training stream
    dm.on_before_batch_transfer(batch, 0)
    assert dm.state_dict() == {"batches_drawn": 3}


def test_worker_processes_keep_the_stream(tiny_corpus):
    assert same(take(make_dm(tiny_corpus, num_workers=2), 6), take(make_dm(tiny_corpus), 6))


def test_validation_set_is_fixed(tiny_corpus):
    dm = make_dm(tiny_corpus, seed=1)
    first = list(dm.val_dataloader())
    again = list(dm.val_dataloader())
    other_run = list(make_dm(tiny_corpus, seed=2).val_dataloader())
    assert len(first) == 3
    assert same(first, again) and same(first, other_run)
    val_text = dm.tokenizer.decode(dm.val_data.tolist())
    x, y = first[0]
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert dm.tokenizer.decode(x[0].tolist()) in val_text


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("dir", "is a directory"),
        (b"", "is empty"),
        ("café".encode("latin-1"), "not UTF-8"),
        (b"to be or not", "fewer than block_size"),
    ],
)
def test_bad_corpus_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path if content == "dir" else tmp_path / "corpus.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        make_dm(path, block_size=8)
    assert "--data" in str(err.value)  # names the option that fixes it


def test_bad_settings_are_refused_up_front(tiny_corpus):
    with pytest.raises(UserError, match="block_size must be positive.*train_fraction"):
        CharDataModule(path=str(tiny_corpus), block_size=0, train_fraction=1.5)


def test_damaged_cached_copy_is_refused(tmp_path):
    path = tmp_path / SHAKESPEARE_FILE
    path.parent.mkdir(parents=True)
    path.write_text("half a file")
    with pytest.raises(UserError, match="does not match"):
        CharDataModule(cache_dir=str(tmp_path)).prepare_data()


def test_default_corpus_comes_from_the_cache(shakespeare, tmp_path):
    cache = shakespeare.parents[1]
    dm = CharDataModule(cache_dir=str(cache), url="http://127.0.0.1:9/never-used")
    dm.prepare_data()  # present and verified, so nothing is downloaded
    assert dm.vocab_size == 65


def test_a_test_text_is_read_compactly_in_the_models_ids(tiny_corpus, tmp_path):
    """README: test_path goes through the token cache: one byte per character here, translated or not."""
    subset = tmp_path / "subset.txt"
    subset.write_text("we speak, hear me.\n" * 5)  # fewer characters than the corpus: translated
    for path in (tiny_corpus, subset):
        dm = make_dm(tiny_corpus, test_path=str(path))
        ids = dm.test_dataloader().dataset.ids
        assert ids.dtype == torch.uint8
        assert ids.tolist() == dm.tokenizer.encode(path.read_text())


@pytest.mark.parametrize(
    "length, block_size, stride",
    [(50, 8, 1), (50, 8, 3), (50, 8, 8), (5, 8, 4), (64, 8, 8), (9, 8, 3), (2, 8, 8), (1, 8, 8)],
)
def test_scored_windows_score_every_prediction_once_with_enough_context(length, block_size, stride):
    ids = torch.arange(length) % 7
    windows = ScoredWindows(ids, block_size, stride)
    scored = []
    for i in range(len(windows)):
        x, y = windows[i]
        start = windows.window(i)[0]
        for j in torch.nonzero(y != -100).flatten().tolist():
            assert x[j] == ids[start + j] and y[j] == ids[start + j + 1]
            assert j >= min(block_size - stride, start + j)  # context: all there is, or block_size - stride
            scored.append(start + j)
    assert scored == list(range(length - 1))
