"""What the device a run lands on can do: the precision a run takes when none is given, and the peak FLOP/s that
MFU is measured against. The rules live here, apart from the Trainer and the callbacks that use them."""

from __future__ import annotations

import math
import time
import warnings

import torch
from lightning.fabric.utilities.throughput import get_available_flops

# CUDA compute capability from which bf16 runs on tensor cores (Ampere: A100, RTX 30xx, L4, H100); below it (T4,
# V100: Colab's free GPUs) bf16 is emulated and slow, while fp16 has tensor cores
BF16_CAPABILITY = (8, 0)


# device names Lightning's table matches to another device: an "NVIDIA L40S" is read as an L4 (a third of its peak)
MISREAD = ("l40s",)


def default_precision(accelerator: str = "auto") -> str:
    """The precision of a run whose config gives none, for ``--trainer.accelerator`` (a name; anything else counts
    as auto):

    - a CUDA GPU that computes bf16 natively: ``bf16-mixed`` (fp16's range without its loss scaling);
    - an older CUDA GPU: ``16-mixed`` (fp16 with Lightning's loss scaling);
    - Apple's MPS and the CPU: ``32-true``. On a CPU the small configs run slower in bf16 (their matrices are too
      small to repay the casts) and CPUs without AVX-512 BF16 emulate it; on MPS mixed precision is left to the
      user (``--trainer.precision 16-mixed``) until it has been measured there.
    """
    name = accelerator.lower() if isinstance(accelerator, str) else "auto"
    if name in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.get_device_capability() >= BF16_CAPABILITY else "16-mixed"
    return "32-true"


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype the matmuls of a run in ``precision`` use."""
    precision = str(precision)
    if "bf16" in precision:
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``: accelerators return from a matmul before it has run."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """The FLOP/s that MFU is measured against, and where the figure comes from: Lightning's datasheet table where
    it knows the device, else the best of eight timed 1024x1024 matmuls in the run's dtype."""
    dtype = precision_dtype(precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    with warnings.catch_warnings():  # an unknown device is not a problem: it is measured below
        warnings.simplefilter("ignore")
        listed = get_available_flops(device, dtype)
    if listed and not any(misread in name.lower() for misread in MISREAD):
        return float(listed), f"{name} datasheet (Lightning's table), {str(dtype).removeprefix('torch.')} dense"
    # best of 8: a busy neighbour only ever makes a matmul slower, and one slow reading inflated MFU past 100%
    n = 1024
    a = b = torch.full((n, n), 0.5, dtype=dtype, device=device)  # not randn: the global RNG is the run's
    best = math.inf
    for _ in range(8):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best, f"measured: a {n}x{n} {str(dtype).removeprefix('torch.')} matmul on {device.type}"
