import inspect
from dataclasses import MISSING, fields

import lightning as L
import pytest

from src.errors import UserError
from src.model import GPTConfig
from src.training.module import CharGPT
from tests.helpers import LECTURE_FIELDS, MODEL_OPTIONS

VOCAB = "\n !abcdefghij"
PLAIN = (str, int, float, bool, type(None))


def module(**kwargs) -> CharGPT:
    return CharGPT(vocab=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, **kwargs)


def attach_trainer(m: CharGPT, precision: str = "32-true", clip: float | None = 1.0, max_steps: int = 100):
    """A Trainer with these settings, attached through the module's public ``trainer`` setter."""
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    m.trainer = L.Trainer(accelerator="cpu", precision=precision, gradient_clip_val=clip, max_steps=max_steps, **quiet)


# where CharGPT's defaults (fit's: the default config, tests/training/test_cli.py) differ from GPTConfig's, the
# lecture's model with every option off
RECIPE = {"block_size": 128, "n_layer": 4, "n_embd": 192, "dropout": 0.0, "value_residual": True, "mtp_weight": 0.3}


def test_every_model_field_is_an_option_with_the_same_default_and_a_help_line():
    """GPTConfig's fields and CharGPT's arguments are declared apart (the CLI reads CharGPT's signature and
    docstring): a field added to one and not the other fails here, and so does one missing from the option list
    that the checkpoint, export, resume and decoding tests run through."""
    arguments = inspect.signature(CharGPT.__init__).parameters
    doc = inspect.getdoc(CharGPT.__init__)  # dedented the same way on every Python (3.13 dedents when compiling)
    for field in fields(GPTConfig):
        if field.name == "vocab_size":  # the vocabulary's length, not an option
            continue
        assert field.name in arguments, f"GPTConfig.{field.name} is not an argument of CharGPT"
        default = field.default if field.default is not MISSING else field.default_factory()
        assert arguments[field.name].default == RECIPE.get(field.name, default), field.name
        assert f"\n    {field.name}: " in doc, f"{field.name} has no help line"
    beyond_the_lecture = {f.name for f in fields(GPTConfig)} - set(LECTURE_FIELDS)
    assert set(MODEL_OPTIONS) == beyond_the_lecture
    assert all(MODEL_OPTIONS[name] != getattr(GPTConfig(), name) for name in MODEL_OPTIONS)


def test_hyperparameters_are_plain_values():
    hparams = dict(module().hparams)
    assert hparams["vocab"] == VOCAB
    assert all(isinstance(v, PLAIN) for v in hparams.values()), hparams


@pytest.mark.parametrize(
    "precision, clip, fused", [("32-true", 1.0, True), ("bf16-mixed", 1.0, None), ("bf16-mixed", None, True)]
)
def test_optimizer_and_schedule(precision, clip, fused):
    m = module(warmup_steps=10, learning_rate=1e-3, min_lr=1e-4, optimizer="adamw", weight_decay=0.1)
    attach_trainer(m, precision, clip)
    config = m.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert optimizer.defaults["fused"] is fused
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert config["lr_scheduler"]["interval"] == "step"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 11)
    for _ in range(100):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_bad_settings_name_the_option():
    with pytest.raises(UserError, match="--model.learning_rate must be positive, got 0.*--model.beta2"):
        module(learning_rate=0, beta2=1.0)
    with pytest.raises(UserError, match="lr_scales has 'embeddings': use embedding, head, matrices, scalars"):
        module(lr_scales={"embeddings": 10.0})
    with pytest.raises(UserError, match="cooldown_fraction must be in \\(0, 1\\], got 0.*lr_scales.head must be pos"):
        module(cooldown_fraction=0, lr_scales={"head": 0})
    with pytest.raises(UserError, match="model.vocab is empty"):
        CharGPT(vocab="")
