"""A model and its tokenizer from plain values, and the plain values that describe them: the one place where a
training run, a checkpoint and an export folder turn settings into a network (``model_type`` names a class of
``src.model.MODELS``; a new model type registered there is built, saved and exported everywhere at once)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from src.data.tokenizer import Tokenizer, make_tokenizer
from src.model import LanguageModel, build_model, model_type_of


def build(values: dict[str, Any]) -> tuple[LanguageModel, Tokenizer]:
    """The model (freshly initialised) and tokenizer that ``values`` describe: ``model_type``, ``tokenizer``,
    ``vocab`` and the ``GPTConfig`` fields; other keys are ignored, so a CharGPT's or a checkpoint's
    hyper-parameters can be passed whole."""
    tokenizer = make_tokenizer(values.get("tokenizer", "chars"), values["vocab"])
    model = build_model(**{**values, "vocab_size": tokenizer.vocab_size})
    return model, tokenizer


def describe(model: LanguageModel, tokenizer: Tokenizer) -> dict[str, Any]:
    """The plain values that ``build`` turns back into this model's architecture and this tokenizer."""
    return {
        "model_type": model_type_of(model),
        **asdict(model.config),
        "tokenizer": tokenizer.kind,
        "vocab": tokenizer.vocab,
    }
