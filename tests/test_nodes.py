"""Several nodes on one machine: two "nodes" of one process each on 127.0.0.1 (gloo on the CPU), started the ways
docs/training.md documents, torchrun and SLURM's srun, and checked for what a cluster user relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import fit_on_two_nodes, run_cli, tiny_args

pytestmark = pytest.mark.slow

# dropout off: each rank draws its own dropout masks, and a checkpoint keeps rank 0's generator only
NODES = {"model.dropout": 0.0, "sample.every_n_steps": 0, "attention_maps.enabled": "false", "trainer.devices": 1}


def weights(cwd: Path, run: str) -> dict:
    ckpt = torch.load(cwd / "lightning_logs" / run / "checkpoints" / "last.ckpt", weights_only=True)
    return {"step": ckpt["global_step"], **{k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}}


def assert_same(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for name in a:
        if name != "step":
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


def test_two_nodes_train_resume_and_match_two_processes_on_one_node(workdir, tiny_corpus):
    # a constant rate: the schedule decays over max_steps, which the second command raises
    constant = {"model.warmup_steps": 0, "model.learning_rate": 1e-3, "model.min_lr": 1e-3}

    def args(steps: int, run: str) -> list[str]:
        return [*tiny_args(tiny_corpus, steps, run, **NODES, **constant), "--ckpt_path=last"]

    fit_on_two_nodes(args(10, "nodes"), workdir)  # the same command twice (more steps): a fresh start, a resume
    fit_on_two_nodes(args(20, "nodes"), workdir)
    checkpoints = sorted(p.name for p in (workdir / "lightning_logs/nodes/checkpoints").iterdir())
    assert checkpoints.count("last.ckpt") == 1 and not [n for n in checkpoints if n.startswith(".")]

    # two processes on one node, uninterrupted: the same global ranks, batches and all-reduce, the same weights
    ddp = {**NODES, **constant, "trainer.devices": 2, "trainer.strategy": "ddp"}
    one_node = tiny_args(tiny_corpus, 20, "one_node", **ddp)
    assert run_cli("fit", *one_node, cwd=workdir).returncode == 0
    nodes = weights(workdir, "nodes")
    assert nodes["step"] == 20
    assert_same(nodes, weights(workdir, "one_node"))

    # one process with rank 0's batches alone: had the ranks drawn the same batches, DDP's mean of their gradients
    # would be this run's gradient, and its weights the same
    assert run_cli("fit", *tiny_args(tiny_corpus, 20, "alone", **NODES, **constant), cwd=workdir).returncode == 0
    alone = weights(workdir, "alone")
    assert any(not torch.allclose(alone[k], nodes[k], atol=1e-4) for k in nodes if k != "step")


def test_two_nodes_under_slurm_variables_train_as_under_torchrun(workdir, tiny_corpus):
    fit_on_two_nodes(tiny_args(tiny_corpus, 10, "torchrun", **NODES), workdir, "torchrun")
    fit_on_two_nodes(tiny_args(tiny_corpus, 10, "slurm", **NODES), workdir, "slurm")
    assert_same(weights(workdir, "torchrun"), weights(workdir, "slurm"))
