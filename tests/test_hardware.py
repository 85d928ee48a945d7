"""The device rules: which precision a run takes when none is given, and the peak MFU is measured against."""

import pytest
import torch

from src.hardware import default_precision, peak_flops, precision_dtype


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device with the given compute capability and name, on this CPU-only machine."""

    def fake(capability: tuple[int, int], name: str = "NVIDIA Fake") -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)

    return fake


@pytest.mark.parametrize(
    "capability, accelerator, expected",
    [
        ((9, 0), "auto", "bf16-mixed"),  # H100
        ((8, 0), "gpu", "bf16-mixed"),  # A100
        ((8, 9), "cuda", "bf16-mixed"),  # L4
        ((7, 5), "auto", "16-mixed"),  # T4, Colab's free tier: bf16 only emulated
        ((7, 0), "gpu", "16-mixed"),  # V100
        ((9, 0), "cpu", "32-true"),  # the user chose the CPU
    ],
)
def test_precision_on_cuda_follows_native_bf16(fake_cuda, capability, accelerator, expected):
    fake_cuda(capability)
    assert default_precision(accelerator) == expected


def test_precision_on_mps_is_32_bit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr("src.hardware.cpu_has_bf16", lambda: True)
    assert default_precision("auto", 384) == default_precision("mps", 384) == "32-true"


@pytest.mark.parametrize(
    "native, n_embd, expected",
    [
        (True, 128, "bf16-mixed"),  # the default config on AVX-512 BF16
        (True, 384, "bf16-mixed"),  # the lecture's model
        (True, 64, "32-true"),  # the notebook's: too narrow for the casts to pay
        (True, None, "32-true"),  # the bigram
        (False, 384, "32-true"),  # AVX2, Apple silicon: bf16 would be emulated
    ],
)
def test_precision_on_cpu_follows_native_bf16_and_width(monkeypatch, native, n_embd, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr("src.hardware.cpu_has_bf16", lambda: native)
    assert default_precision("auto", n_embd) == default_precision("cpu", n_embd) == expected


def test_precision_names_map_to_the_matmul_dtype():
    assert precision_dtype("bf16-mixed") is precision_dtype("bf16-true") is torch.bfloat16
    assert precision_dtype("16-mixed") is torch.float16
    assert precision_dtype("32-true") is precision_dtype("32") is precision_dtype("64-true") is torch.float32


def test_a_listed_gpu_takes_lightnings_datasheet_peak(fake_cuda):
    fake_cuda((9, 0), "NVIDIA H100 PCIe")
    peak, source = peak_flops(torch.device("cuda"), "bf16-mixed")
    assert peak == pytest.approx(756e12, rel=0.01) and "datasheet" in source  # the PCIe card, not the SXM's 989
    fake_cuda((7, 5), "Tesla T4")
    assert peak_flops(torch.device("cuda"), "16-mixed")[0] == pytest.approx(65e12)


def test_an_unlisted_or_misread_device_is_measured(fake_cuda, monkeypatch):
    calls = []
    monkeypatch.setattr("src.hardware.synchronize", lambda device: calls.append(device.type))
    peak, source = peak_flops(torch.device("cpu"), "32-true")
    assert 1e8 < peak < 1e15 and source.startswith("measured: a 1024x1024 float32 matmul on cpu")
    # before and after each timed matmul (at least 8): an accelerator's queue is waited for
    assert len(calls) >= 16 and len(calls) % 2 == 0
    fake_cuda((8, 9), "NVIDIA L40S")  # Lightning's table reads this as an L4
    monkeypatch.setattr(torch, "full", lambda *a, **k: torch.ones(*a[:1], dtype=k["dtype"]))  # no CUDA memory here
    assert peak_flops(torch.device("cuda"), "bf16-mixed")[1].startswith("measured")


def test_a_slow_spell_at_the_start_does_not_set_the_measured_peak(monkeypatch):
    now, syncs = [0.0], []

    def synchronize(device) -> None:  # the wait after a matmul is where its time passes: 10 ms for the first 8
        syncs.append(device)  # (a busy neighbour), then 2 ms
        if len(syncs) % 2 == 0:
            now[0] += 0.010 if len(syncs) <= 16 else 0.002

    monkeypatch.setattr("src.hardware.synchronize", synchronize)
    monkeypatch.setattr("src.hardware.time.perf_counter", lambda: now[0])
    peak, _ = peak_flops(torch.device("cpu"), "32-true")
    assert peak == pytest.approx(2 * 1024**3 / 0.002)


def test_dtype_auto_takes_bf16_only_for_big_models_on_bf16_cpus(monkeypatch):
    from src import hardware as cli
    from src.model import GPT, GPTConfig

    small = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))  # 0.8M params
    big = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=3, n_head=4, n_embd=384))  # 5.4M params
    cpu = torch.device("cpu")
    assert cli.decode_dtype("float32", big, cpu) is torch.float32
    assert cli.decode_dtype("bfloat16", small, cpu) is torch.bfloat16
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(cli, "cpu_has_bf16", lambda native=native: native)
        assert cli.decode_dtype("auto", big, cpu) is expected
        assert cli.decode_dtype("auto", small, cpu) is None


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        ("flags\t\t: fpu avx2 avx512f avx512_bf16\n", True),  # AVX-512 BF16 (this EPYC)
        ("flags\t\t: fpu avx2 amx_bf16 amx_tile\n", True),  # AMX (Sapphire Rapids)
        ("flags\t\t: fpu avx2 fma\n", False),  # AVX2 only: bf16 would be emulated
        (None, False),  # no /proc/cpuinfo (Windows, macOS): fp32, as the README says
    ],
)
def test_native_bf16_is_read_from_proc_cpuinfo(monkeypatch, cpuinfo, expected):
    from pathlib import Path

    from src.hardware import cpu_has_bf16

    def read_text(path, *args, **kwargs):
        if cpuinfo is None:
            raise FileNotFoundError(path)
        return cpuinfo

    monkeypatch.setattr(Path, "read_text", read_text)
    assert cpu_has_bf16() is expected
