"""Loading a model for decoding from either form it is kept in: a training checkpoint or an export folder."""

from __future__ import annotations

import torch

from src.checkpoints.checkpoint import load_checkpoint, model_from_checkpoint
from src.checkpoints.pretrained import from_pretrained, is_pretrained
from src.data.tokenizer import Tokenizer
from src.model import LanguageModel


def load_model(ckpt_path: str, device: torch.device) -> tuple[LanguageModel, Tokenizer]:
    """The model (in eval mode, on ``device``) and tokenizer of a checkpoint or an export folder."""
    if is_pretrained(ckpt_path):
        return from_pretrained(ckpt_path, device)
    return model_from_checkpoint(load_checkpoint(ckpt_path, map_location=device))
