"""The registry of model types: every path that builds, saves or exports a model goes through ``MODELS``, so a model
type registered here works everywhere at once."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal

from src.errors import UserError
from src.model.base import GPTConfig, LanguageModel
from src.model.bigram import BigramLanguageModel
from src.model.gpt import GPT
from src.model.lecture import STAGES

# model_type -> class: the registry every path builds from (the lecture's stages between its bigram and its GPT)
MODELS = {"gpt": GPT, "bigram": BigramLanguageModel, **STAGES}
ModelType = Literal[tuple(MODELS)]  # the names, as a type the CLI turns into --model.model_type's choices


def model_type_of(model: LanguageModel) -> str:
    """The registry's name for ``model``'s class."""
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(
        f"{type(model).__name__} is not in src.model.registry.MODELS: register it there to save or export it"
    )


def build_model(model_type: str = "gpt", **values: Any) -> LanguageModel:
    """The model that plain values describe: ``model_type`` (a name in ``MODELS``) and the ``GPTConfig`` fields among
    ``values``; other keys are ignored, so a CharGPT's or a checkpoint's hyper-parameters can be passed whole."""
    if model_type not in MODELS:
        raise UserError(f"unknown model_type {model_type!r}: choose one of {sorted(MODELS)}")
    return MODELS[model_type](GPTConfig(**{f.name: values[f.name] for f in fields(GPTConfig) if f.name in values}))
