"""The networks, in plain PyTorch: they import torch and ``src.errors``, nothing else of chargpt's.

``base`` (the config and what every model type shares), ``gpt`` (the lecture's transformer and its blocks),
``bigram`` (its baseline), ``kv_cache`` (decoding's cache), ``registry`` (model types by name), ``dropout`` (the
attention kernels and CPU dropout).
"""

from src.model.base import GPTConfig, LanguageModel
from src.model.bigram import BigramLanguageModel
from src.model.gpt import GPT
from src.model.kv_cache import KVCache
from src.model.registry import MODELS, build_model, model_type_of

__all__ = [
    "GPT",
    "MODELS",
    "BigramLanguageModel",
    "GPTConfig",
    "KVCache",
    "LanguageModel",
    "build_model",
    "model_type_of",
]
