"""The CUDA paths: bf16 training and its resume, compiled training, the fused attention kernel with dropout, DDP on
one device, compiled decoding. Marked ``gpu``: skipped without CUDA (conftest), run by ``benchmarks/gpu_check.sh``.
"""

import pytest
import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from src.generation.decoding import generate
from src.train import main
from tests.helpers import tiny_args, tiny_gpt

pytestmark = pytest.mark.gpu

GPU = {"trainer.accelerator": "gpu", "trainer.devices": 1}


def fit(corpus, max_steps: int, *extra: str, run_name: str = "t", **overrides) -> None:
    main(["fit", *tiny_args(corpus, max_steps=max_steps, run_name=run_name, **{**GPU, **overrides}), *extra])


def last(workdir, run_name: str = "t") -> dict:
    return torch.load(workdir / f"lightning_logs/{run_name}/checkpoints/last.ckpt", weights_only=True)


def test_default_precision_on_this_gpu_trains_and_resumes_as_if_never_stopped(workdir, tiny_corpus):
    """No --trainer.precision: bf16-mixed on Ampere and later, 16-mixed before. A run stopped at step 10 and resumed
    ends where the uninterrupted run ends, as closely as the GPU's kernels allow (atomics make some sums vary)."""
    fit(tiny_corpus, 20, run_name="whole")
    fit(tiny_corpus, 10, run_name="split")
    fit(tiny_corpus, 20, "--ckpt_path=last", run_name="split")
    whole, split = last(workdir, "whole"), last(workdir, "split")
    assert whole["global_step"] == split["global_step"] == 20
    for name, weights in whole["state_dict"].items():
        torch.testing.assert_close(split["state_dict"][name], weights, rtol=1e-2, atol=1e-3, msg=name)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_16_mixed_with_loss_scaling_and_clipping(workdir, tiny_corpus, optimizer):
    """What a T4 or V100 gets by default: the GradScaler must unscale every gradient, Muon's included, before
    clipping, and the weights stay finite."""
    fit(tiny_corpus, 10, "--trainer.precision=16-mixed", f"--model.optimizer={optimizer}")
    state = last(workdir)["state_dict"]
    assert all(torch.isfinite(w).all() for w in state.values() if w.is_floating_point())


def assert_same_training(workdir, a: str, b: str) -> None:
    """Two runs of the same seed and data end at the same weights, as closely as different kernels allow."""
    first, second = last(workdir, a), last(workdir, b)
    assert first["global_step"] == second["global_step"] == 10
    for name, weights in first["state_dict"].items():
        torch.testing.assert_close(second["state_dict"][name], weights, rtol=1e-2, atol=1e-3, msg=name)


def test_compiled_training_takes_the_steps_eager_training_takes(workdir, tiny_corpus):
    fit(tiny_corpus, 10, "--trainer.precision=32-true", run_name="eager")
    fit(tiny_corpus, 10, "--trainer.precision=32-true", "--model.compile=true", run_name="compiled")
    assert_same_training(workdir, "eager", "compiled")


def test_ddp_on_one_device_takes_the_steps_of_a_plain_run(workdir, tiny_corpus):
    fit(tiny_corpus, 10, "--trainer.precision=32-true", run_name="plain")
    fit(tiny_corpus, 10, "--trainer.precision=32-true", run_name="ddp", **{"trainer.strategy": "ddp"})
    assert_same_training(workdir, "plain", "ddp")


def test_the_fused_kernel_with_dropout_agrees_with_the_math_path():
    """The same dropout probability through the fused kernels and through the math path: without dropout the
    outputs agree to bf16 rounding; with it, each is a random draw, so their means over many draws agree."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(8, 4, 128, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    scale = 64**-0.5

    def attend(backends, p: float) -> torch.Tensor:
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scale).float()

    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    torch.testing.assert_close(attend(fused, 0.0), attend([SDPBackend.MATH], 0.0), rtol=2e-2, atol=2e-2)
    means = [torch.stack([attend(b, 0.2) for _ in range(200)]).mean(0) for b in (fused, [SDPBackend.MATH])]
    expected = attend([SDPBackend.MATH], 0.0)
    for mean in means:  # dropout rescales by 1/(1-p): the mean of the draws is the output without dropout
        assert (mean - expected).abs().mean() < 0.02 * expected.abs().mean() + 1e-3


def test_compiled_decoding_equals_eager_for_a_seed():
    model = tiny_gpt().cuda()
    prompt = torch.tensor([[1, 2, 3]], device="cuda")
    runs = [
        generate(model, prompt, 40, top_k=5, generator=torch.Generator("cuda").manual_seed(1), compile=c)
        for c in (False, True)
    ]
    assert torch.equal(*runs)
