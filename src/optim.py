"""AdamW with nanoGPT's decay rule, Muon for the hidden weight matrices as an alternative, and linear warmup into
cosine or linear decay built from ``torch.optim.lr_scheduler``."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings (>= 2-D); leave biases and LayerNorm gains (1-D) alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # the complement: each tensor lands in exactly one group
    # the names label the learning-rate curves (lr-AdamW/decay, or lr-MuonAdamW/decay with Muon)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def adamw(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], fused: bool = True
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``. The fused kernel updates every tensor in one pass, cheaper than the default
    foreach path on a CPU (docs/performance.md) and one launch on CUDA."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused or None)


def warmup_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr: float, shape: str = "cosine"
) -> LRScheduler:
    """Linear warmup from ~0 to the base lr over ``warmup_steps``, then cosine (or, with ``shape="linear"``,
    straight-line) decay to ``min_lr`` at ``total_steps``; stepped once per optimizer step. ``min_lr`` equal to the
    base lr gives a constant rate."""
    decay_steps = max(total_steps - warmup_steps, 1)
    base_lr = optimizer.param_groups[0]["lr"]
    if min_lr >= base_lr:
        decay = ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif shape == "linear":
        decay = LinearLR(optimizer, start_factor=1.0, end_factor=min_lr / base_lr, total_iters=decay_steps)
    elif shape == "cosine":
        decay = CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=min_lr)
    else:
        raise ValueError(f"unknown decay shape {shape!r}: use 'cosine' or 'linear'")
    if warmup_steps <= 0:
        return decay
    warmup = LinearLR(optimizer, start_factor=1.0 / (warmup_steps + 1), total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices of the Linear layers that neither read nor write tokens: what Muon orthogonalises.
    Embeddings, the output layer (the model's ``vocab_axes``), norms and biases are left to AdamW."""
    vocab = getattr(model, "vocab_axes", {})
    return [
        module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and f"{name}.weight" not in vocab and module.weight.requires_grad
    ]


class MuonAdamW(torch.optim.Optimizer):
    """Muon for ``hidden_matrices``, AdamW (``param_groups``' rule) for every other parameter, as one optimizer:
    Lightning's automatic optimization takes a single one, and the schedule, gradient clipping and the
    learning-rate log act on ``param_groups``, which are the two optimizers' own groups."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], fused: bool):
        matrices = hidden_matrices(model)
        ids = {id(p) for p in matrices}
        # match_rms_adamw scales Muon's update to AdamW's size, so one learning rate and schedule serve both
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.muon.param_groups[0]["name"] = "muon"
        others = [
            {**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in param_groups(model, weight_decay)
        ]
        groups = [g for g in others if g["params"]]
        self.adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # loading gives the two optimizers new group dicts: share them again, or the schedule would set dead ones
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
