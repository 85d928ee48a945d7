"""What the device a run lands on can do, and the rules that follow: the precision a run takes when none is given,
the peak FLOP/s that MFU is measured against, the device ``--device auto`` picks and the dtype decoding's weights
take. The rules live here, apart from the Trainer, the callbacks and the CLIs that use them."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch

from src.errors import UserError

# CUDA compute capability from which bf16 runs on tensor cores (Ampere: A100, RTX 30xx, L4, H100); below it (T4,
# V100: Colab's free GPUs) bf16 is emulated and slow, while fp16 has tensor cores
BF16_CAPABILITY = (8, 0)


# device names Lightning's table matches to another device: an "NVIDIA L40S" is read as an L4 (a third of its peak)
MISREAD = ("l40s",)


# the narrowest model measured to train faster in bf16-mixed than in fp32 on a CPU with native bf16; narrower ones ran
# slower in it (docs/experiments.md, the precision rule)
BF16_MIN_WIDTH = 128


def default_precision(accelerator: str = "auto", n_embd: int | None = None) -> str:
    """The precision of a run whose config gives none, for ``--trainer.accelerator`` (a name; anything else counts
    as auto) and a model ``n_embd`` wide (None: a model without matmuls to speak of, such as the bigram):

    - a CUDA GPU that computes bf16 natively: ``bf16-mixed`` (fp16's range without its loss scaling);
    - an older CUDA GPU: ``16-mixed`` (fp16 with Lightning's loss scaling);
    - a CPU that multiplies bf16 natively (AVX-512 BF16 or AMX), for models at least ``BF16_MIN_WIDTH`` wide:
      ``bf16-mixed``;
    - Apple's MPS and any other CPU: ``32-true``. CPUs without native bf16 emulate it, slowly; on MPS mixed
      precision is left to the user (``--trainer.precision 16-mixed``) until it has been measured there.
    """
    name = accelerator.lower() if isinstance(accelerator, str) else "auto"
    if name in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.get_device_capability() >= BF16_CAPABILITY else "16-mixed"
    on_cpu = name == "cpu" or (name == "auto" and not torch.backends.mps.is_available())
    if on_cpu and n_embd is not None and n_embd >= BF16_MIN_WIDTH and cpu_has_bf16():
        return "bf16-mixed"
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


PEAK_SECONDS = 0.1  # start-up time every run pays, the speedrun's included


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """The FLOP/s that MFU is measured against, and where the figure comes from: Lightning's datasheet table where
    it knows the device, else the best of timed 1024x1024 matmuls in the run's dtype (a tenth of a second's worth)."""
    dtype = precision_dtype(precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    from lightning.fabric.utilities.throughput import get_available_flops  # here: the CLIs need no Lightning

    with warnings.catch_warnings():  # an unknown device is not a problem: it is measured below
        warnings.simplefilter("ignore")
        listed = get_available_flops(device, dtype)
    if listed and not any(misread in name.lower() for misread in MISREAD):
        return float(listed), f"{name} datasheet (Lightning's table), {str(dtype).removeprefix('torch.')} dense"
    # the best reading: a busy neighbour only ever makes a matmul slower. At least 8 readings over at least
    # PEAK_SECONDS, since a few back to back can all fall inside a slow spell of a shared VM; spells can outlast any
    # window worth its start-up time, so MFU on a shared CPU stays a rough figure (docs/performance.md)
    n = 1024
    a = b = torch.full((n, n), 0.5, dtype=dtype, device=device)  # not randn: the global RNG is the run's
    best, readings, began = math.inf, 0, time.perf_counter()
    while readings < 8 or (time.perf_counter() - began < PEAK_SECONDS and readings < 500):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
        readings += 1
    return 2 * n**3 / best, f"measured: a {n}x{n} {str(dtype).removeprefix('torch.')} matmul on {device.type}"


def pick_device(name: str) -> torch.device:
    """The device ``--device`` names (auto: CUDA, then MPS, then the CPU), refused by name if absent."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if not available.get(device.type, False):
            raise UserError(f"--device {name}: no such device here; use --device auto")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


BF16_MIN_PARAMS = 4_000_000  # below this, bf16 decodes slower on a CPU: the casts cost more than the reads save


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 (or AMX): the CPU multiplies bf16 natively; elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def decode_dtype(name: str, model: torch.nn.Module, device: torch.device) -> torch.dtype | None:
    """The dtype of the weights to decode with: ``auto`` takes bfloat16 on CPUs that multiply it natively, for
    models big enough to gain from halving the bytes each token reads (docs/performance.md); float32 otherwise."""
    if name != "auto":
        return getattr(torch, name)
    big = sum(p.numel() for p in model.parameters()) >= BF16_MIN_PARAMS
    return torch.bfloat16 if device.type == "cpu" and big and cpu_has_bf16() else None
