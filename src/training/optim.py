"""AdamW with nanoGPT's decay rule, Muon for the hidden weight matrices as an alternative, learning rates per kind
of parameter on request, and linear warmup into cosine, linear or warmup-stable-decay built from
``torch.optim.lr_scheduler``."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

LR_SCALES = ("embedding", "head", "matrices", "scalars")


def param_groups(model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Decay matrices and embeddings (>= 2-D); leave biases and LayerNorm gains (1-D) alone. With ``lr_scales``
    (keys from ``LR_SCALES``), the embeddings, the output layer's weight, the other matrices and the scalars (1-D and
    0-D tensors) are groups of their own, each stepping at its scale times the scheduled learning rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # the complement: each tensor lands in exactly one group
    # the names label the learning-rate curves (lr-AdamW/decay, or lr-MuonAdamW/decay with Muon)
    if not lr_scales:
        return [
            {"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        ]
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    named = dict(model.named_parameters())  # the output layers: what reads the vocabulary out, bar embeddings
    head = {id(named[n]) for n in getattr(model, "vocab_axes", {}) if n in named and named[n].dim() >= 2} - embeddings
    kinds = {
        "embedding": [p for p in decay if id(p) in embeddings],
        "head": [p for p in decay if id(p) in head],
        "matrices": [p for p in decay if id(p) not in embeddings | head],
        "scalars": no_decay,
    }
    decays = {kind: 0.0 if kind == "scalars" else weight_decay for kind in kinds}
    return [
        {"params": ps, "weight_decay": decays[kind], "name": kind, "lr_scale": lr_scales.get(kind, 1.0)}
        for kind, ps in kinds.items()
    ]


class ScaledAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` where a group's ``lr_scale`` (default 1) multiplies the scheduled learning rate for its
    step: the schedule sets one curve and logs it, each group follows it at its own height."""

    @torch.no_grad()
    def step(self, closure=None):
        scheduled = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, scheduled, strict=True):
                group["lr"] = lr


def adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    fused: bool = True,
    lr_scales: dict[str, float] | None = None,
    skip: list[nn.Parameter] | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``, less the parameters in ``skip`` (another optimizer's; groups left empty are
    dropped). The fused kernel updates every tensor in one pass, cheaper than the default foreach path on a CPU
    (docs/performance.md) and one launch on CUDA."""
    groups = param_groups(model, weight_decay, lr_scales)
    if skip:
        ids = {id(p) for p in skip}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
        groups = [g for g in groups if g["params"]]
    build = ScaledAdamW if lr_scales else torch.optim.AdamW  # without scales, torch's own step
    return build(groups, lr=lr, betas=betas, fused=fused or None)


def warmup_decay(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr: float,
    shape: str = "cosine",
    cooldown_fraction: float = 0.4,
) -> LRScheduler:
    """Linear warmup from ~0 to the base lr over ``warmup_steps``, then cosine (or, with ``shape="linear"``,
    straight-line) decay to ``min_lr`` at ``total_steps``; stepped once per optimizer step. ``shape="wsd"``
    (warmup-stable-decay) holds the base lr and decays in a straight line over the last ``cooldown_fraction`` of
    the steps. ``min_lr`` equal to the base lr gives a constant rate."""
    decay_steps = max(total_steps - warmup_steps, 1)
    base_lr = optimizer.param_groups[0]["lr"]
    phases, milestones = [], []  # SequentialLR switches from one phase to the next at each milestone
    if warmup_steps > 0:
        phases.append(LinearLR(optimizer, start_factor=1.0 / (warmup_steps + 1), total_iters=warmup_steps))
        milestones.append(warmup_steps)
    if min_lr >= base_lr:
        phases.append(ConstantLR(optimizer, factor=1.0, total_iters=0))
    elif shape == "wsd":
        cooldown = min(max(round(cooldown_fraction * total_steps), 1), decay_steps)
        if cooldown < decay_steps:
            phases.append(ConstantLR(optimizer, factor=1.0, total_iters=0))
            milestones.append(total_steps - cooldown)
        phases.append(LinearLR(optimizer, start_factor=1.0, end_factor=min_lr / base_lr, total_iters=cooldown))
    elif shape == "linear":
        phases.append(LinearLR(optimizer, start_factor=1.0, end_factor=min_lr / base_lr, total_iters=decay_steps))
    elif shape == "cosine":
        phases.append(CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=min_lr))
    else:
        raise ValueError(f"unknown decay shape {shape!r}: use 'cosine', 'linear' or 'wsd'")
    return phases[0] if len(phases) == 1 else SequentialLR(optimizer, phases, milestones=milestones)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices of the Linear layers that neither read nor write tokens: what Muon orthogonalises.
    Embeddings, the output layer (the model's ``vocab_axes``), norms and biases are left to AdamW."""
    vocab = getattr(model, "vocab_axes", {})
    return [
        module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and f"{name}.weight" not in vocab and module.weight.requires_grad
    ]


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with the Newton-Schulz iterations of same-shaped matrices batched: one matmul per
    iteration for every layer's ``c_attn``, another for their ``c_proj``, and so on: one by one, a small model's many
    small matrices cost a large share of a CPU step (docs/experiments.md measures both). The state (a
    ``momentum_buffer`` per matrix), the defaults and the arithmetic are torch's, so the two load each other's state
    and take the same steps. Two group keys of its own, both off unless set: ``lr_scale`` (as ``ScaledAdamW``'s) and
    ``cautious`` (cautious weight decay: decay only the entries the update moves towards zero too)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[torch.Size, list[nn.Parameter]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    if "momentum_buffer" not in self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                    by_shape.setdefault(p.shape, []).append(p)
            lr, momentum = group["lr"] * group.get("lr_scale", 1.0), group["momentum"]
            for shape, params in by_shape.items():
                grads = [p.grad for p in params]
                buffers = [self.state[p]["momentum_buffer"] for p in params]
                torch._foreach_lerp_(buffers, grads, 1 - momentum)
                update = torch.stack(buffers)
                if group["nesterov"]:
                    update = torch.stack(grads).lerp_(update, momentum)
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                decay(params, update, lr * group["weight_decay"], group.get("cautious", False))
                torch._foreach_add_(params, list(update.unbind(0)), alpha=-lr * lr_ratio(shape, group["adjust_lr_fn"]))
        return loss


def decay(params: list[nn.Parameter], update: torch.Tensor, rate: float, cautious: bool) -> None:
    """Decoupled weight decay, p -= rate * p; cautious (Chen et al., 2025), only where p and the update (which is
    subtracted) have the same sign, so the decay never pulls against the step."""
    if not cautious:
        torch._foreach_mul_(params, 1 - rate)
        return
    stacked = torch.stack(params)  # (N, A, B)
    agree = (stacked * update.to(stacked.dtype)) > 0
    torch._foreach_sub_(params, list((stacked * agree).mul_(rate).unbind(0)))


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (in bf16, as torch's) on a stack of matrices (N, A, B) at once: each
    matrix moves towards the nearest semi-orthogonal one, its singular values into roughly (0.5, 1.5)."""
    a, b, c = coefficients
    x = g.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: the Gram matrix x @ x.T is the smaller one
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def lr_ratio(shape: torch.Size, adjust_lr_fn: str | None) -> float:
    """How much ``torch.optim.Muon`` scales the learning rate for a matrix of ``shape`` (A, B)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":  # an update of AdamW's typical size
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    return 1.0


class MuonAdamW(torch.optim.Optimizer):
    """Muon for ``hidden_matrices``, AdamW (``param_groups``' rule) for every other parameter, as one optimizer:
    Lightning's automatic optimization takes a single one, and the schedule, gradient clipping and the
    learning-rate log act on ``param_groups``, which are the two optimizers' own groups."""

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        fused: bool,
        lr_scales: dict[str, float] | None = None,
        cautious_weight_decay: bool = False,
    ):
        matrices = hidden_matrices(model)
        # match_rms_adamw scales Muon's update to AdamW's size, so one learning rate and schedule serve both
        self.muon = Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.muon.param_groups[0]["name"] = "muon"
        if lr_scales:  # only when asked, so a checkpoint's groups stay as they were without them
            self.muon.param_groups[0]["lr_scale"] = lr_scales.get("matrices", 1.0)
        if cautious_weight_decay:
            self.muon.param_groups[0]["cautious"] = True
        self.adamw = adamw(model, lr, weight_decay, betas, fused, lr_scales, skip=matrices)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})

    def warm_up_momentum(self, step: int, steps: int) -> None:
        """Muon's momentum at ``step`` of a warm-up over ``steps``: from 0.85 up to torch's 0.95 (modded-nanogpt's
        schedule), a function of the step alone, so a resumed run takes the same steps."""
        self.muon.param_groups[0]["momentum"] = 0.85 + 0.10 * min(step / steps, 1.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.muon.step(closure)  # the closure (forward and backward) runs first, inside Muon's step
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # loading gives the two optimizers new group dicts: share them again, or the schedule would set dead ones
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
