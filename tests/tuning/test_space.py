"""Search-space files: every problem named with its key, before any trial starts."""

import pytest

from src.errors import UserError
from src.tuning.space import load_space

KEYS = {"model", "model.learning_rate", "model.n_head", "model.n_embd", "data", "data.batch_size"}


def test_a_space_file_becomes_params(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "model.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "model.n_head: {type: int, low: 2, high: 8, step: 2}\n"
        "data.batch_size: {type: categorical, choices: [16, 32]}\n"
    )
    lr, heads, batch = load_space(path, KEYS)
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert heads.grid() == [2, 4, 6, 8] and batch.grid() == [16, 32]
    with pytest.raises(UserError, match="model.learning_rate: a grid needs choices"):
        lr.grid()


def test_every_problem_of_a_space_file_is_named_at_once(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "model.learning_rat: {type: float, low: 1, high: 2}\n"
        "learning_rate: {type: float, low: 1, high: 2}\n"
        "model.n_head: {type: integer, low: 1, high: 4}\n"
        "model.n_embd: {type: float, low: 0, high: 1, log: true}\n"
        "data.batch_size: {type: int, low: 64, high: 16}\n"
    )
    with pytest.raises(UserError) as err:
        load_space(path, KEYS)
    message = str(err.value)
    assert message.startswith(f"--space {path}: model.learning_rat: not a config key of fit")
    assert "learning_rate: not a config key of fit (did you mean model.learning_rate?)" in message
    assert "model.n_head: give a type: one of float, int, categorical" in message
    assert "model.n_embd: a log scale needs low > 0, got 0" in message
    assert "data.batch_size: low (64) must not exceed high (16)" in message


@pytest.mark.parametrize("text, problem", [("", "expected a mapping"), ("a: [", "is not valid YAML")])
def test_an_empty_or_broken_file_says_so(tmp_path, text, problem):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=problem):
        load_space(path, KEYS)
    with pytest.raises(UserError, match="No such file"):
        load_space(tmp_path / "missing.yaml", KEYS)


def test_the_default_space_proposes_no_shape_the_model_refuses():
    """Every width and head count it offers go together, with the default config's other options (rotary embeddings
    need an even head size too): a trial of the default space is never spent on a refusal."""
    import itertools

    import yaml

    from src.model.base import GPTConfig
    from tests.helpers import REPO

    space = {p.key: p for p in load_space(REPO / "configs/tune/default.yaml", set(KEYS) | {"model.n_layer",
             "model.weight_decay", "model.dropout", "data.block_size"})}  # fmt: skip
    model = yaml.safe_load((REPO / "configs/shakespeare_char.yaml").read_text())["model"]
    assert (model["n_embd"], model["n_head"]) in itertools.product(space["model.n_embd"].choices,
                                                                   space["model.n_head"].choices)  # fmt: skip
    for width, heads in itertools.product(space["model.n_embd"].choices, space["model.n_head"].choices):
        for rope in (False, True):
            values = {**model, "n_embd": width, "n_head": heads, "rope": rope, "vocab_size": 65, "block_size": 256}
            assert GPTConfig.problems(values) == [], (width, heads, rope)
