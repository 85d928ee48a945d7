"""GPTConfig's checks and the registry of model types."""

import pytest

from src.model import GPTConfig, build_model


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("n_embd", 30, "n_embd \\(30\\) must be divisible by n_head \\(4\\)"),
        ("n_layer", 0, "n_layer must be a positive integer, got 0"),
        ("block_size", -3, "block_size must be a positive integer, got -3"),
        ("dropout", 1.0, "dropout must be in \\[0, 1\\), got 1.0"),
        ("dropout", -0.1, "dropout must be in \\[0, 1\\), got -0.1"),
        ("logit_softcap", 0.0, "logit_softcap must be positive \\(or null for none\\), got 0.0"),
        ("unet", True, "unet skips join the first half of the blocks to the last: n_layer must be 2 or more, got 1"),
    ],
)
def test_config_errors_name_the_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{"n_head": 4, "n_embd": 32, "n_layer": 1, field: value})


def test_a_head_count_that_does_not_divide_the_width_is_answered_with_ones_that_do():
    with pytest.raises(
        ValueError, match=r"\(30\) must be divisible by n_head \(4\): n_head 1, 2, 3, 5, 6, 10, 15, 30 fit$"
    ):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_head 1, 2, 3, 4, 6, 8, 12, 16, 24, 32 fit, among others$"):
        GPTConfig(n_embd=192, n_head=5)


def test_unknown_model_type():
    with pytest.raises(ValueError, match="unknown model_type 'rnn'"):
        build_model("rnn")
