"""RNGState: the random-number state a resumed run needs to draw the same dropout masks as an uninterrupted one.

It is kept as plain tensors and tuples under the checkpoint's ``rng_states`` key, so the checkpoint still loads with
``torch.load(weights_only=True)`` (numpy's state would not).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch


class RNGState(L.Callback):
    def __init__(self, enabled: bool = True) -> None:
        """Keeps the random-number state in checkpoints, so that a resumed run draws what an uninterrupted one would.

        Args:
            enabled: set false only if exact resumption does not matter to you.
        """
        self.enabled = enabled

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        random.setstate(states["python"])
