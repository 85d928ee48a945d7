"""The lecture's bigram baseline: the next token's logits read straight from a table."""

from __future__ import annotations

import torch
import torch.nn as nn

from src.model.base import GPTConfig, LanguageModel


class BigramLanguageModel(LanguageModel):
    """The lecture's baseline: each token reads the logits of the next one straight from a table."""

    vocab_axes = {"token_embedding_table.weight": (0, 1)}

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)

    @property
    def head(self) -> nn.Module:
        return self.token_embedding_table

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        return idx

    def features_at(self, idx: torch.Tensor, input_pos: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        # the table reads the token itself, so decoding needs no cache at all
        return idx.index_select(1, index.view(1))

    def token_embeddings(self) -> torch.Tensor:
        return self.token_embedding_table.weight
