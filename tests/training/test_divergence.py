"""The divergence guard: a non-finite step stops the run with exit status 3 and keeps the last good checkpoint; spikes
are skipped on request; recovery rolls back and goes on; every rank agrees."""

from __future__ import annotations

import re
import shlex

import pytest
import torch

from src.train import main
from src.training.divergence import EXIT_DIVERGED, DivergenceGuard
from tests.helpers import poison, run_cli, tiny_args

pytestmark = pytest.mark.slow


def checkpoints(workdir, run: str = "t") -> list[str]:
    return sorted(p.name for p in (workdir / "lightning_logs" / run / "checkpoints").glob("*.ckpt"))


def finite(path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def guard_state(path) -> dict:
    callbacks = torch.load(path, weights_only=True)["callbacks"]
    return next(v for k, v in callbacks.items() if k.startswith("DivergenceGuard"))


def test_a_learning_rate_far_too_high_stops_at_once_and_keeps_the_last_good_checkpoint(workdir, tiny_corpus):
    # the run, at the tiny size: AdamW at 30 blows up within a few steps of its warmup
    args = tiny_args(tiny_corpus, 60, **{"trainer.val_check_interval": 2, "model.optimizer": "adamw"})
    result = run_cli("fit", *args, "--model.learning_rate=30", cwd=workdir)
    assert result.returncode == EXIT_DIVERGED, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    step = int(re.search(r"training diverged at step (\d+): the (loss|gradient norm) is (nan|inf)", result.stderr)[1])
    assert step < 50
    assert "last good state: lightning_logs/t/checkpoints/last.ckpt (step" in result.stderr
    assert "--model.learning_rate" in result.stderr and "--trainer.precision 32-true" not in result.stderr  # fp32
    names = checkpoints(workdir)
    assert "last.ckpt" in names and not [n for n in names if "nan" in n or "inf" in n]
    assert all(finite(workdir / "lightning_logs/t/checkpoints" / n) for n in names)
    saved = torch.load(workdir / "lightning_logs/t/checkpoints/last.ckpt", weights_only=True)["global_step"]
    assert saved < step

    # the command it prints goes on from last.ckpt at the lower rate it names, which the schedule then follows
    command = shlex.split(result.stderr.split("go on from it at half the learning rate: ")[1].splitlines()[0])
    assert command[:4] == ["python", "-m", "src.train", "fit"] and command.count("--model.learning_rate") == 1
    command[command.index("--model.learning_rate") + 1] = "0.003"
    again = run_cli(*command[3:], cwd=workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"the learning rate is 0.003 from step {saved} on (it was 30)" in again.stderr
    last = torch.load(workdir / "lightning_logs/t/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 60 and finite(workdir / "lightning_logs/t/checkpoints/last.ckpt")
    assert last["hyper_parameters"]["learning_rate"] == 0.003
    assert last["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 0.003


def test_a_nan_on_one_rank_stops_every_rank(workdir, tiny_corpus):
    ddp = {"trainer.devices": 2, "trainer.strategy": "ddp", "model.dropout": 0.0, "attention_maps.enabled": "false"}
    result = run_cli("fit", *tiny_args(tiny_corpus, 40, **ddp), poison(15, float("nan"), rank=1), cwd=workdir)
    assert result.returncode == EXIT_DIVERGED, result.stderr[-3000:]
    assert result.stderr.count("training diverged at step 16: the loss is nan") == 1  # rank 0 says it for all
    assert "Traceback" not in result.stderr
    assert checkpoints(workdir) == ["best-step=10-val_loss=" + checkpoints(workdir)[0].split("=")[-1], "last.ckpt"]
    assert torch.load(workdir / "lightning_logs/t/checkpoints/last.ckpt", weights_only=True)["global_step"] == 10


def test_a_nan_validation_stops_the_run_before_any_checkpoint_is_written_for_it(workdir, tiny_corpus, capsys):
    # one batch of the validation's two is NaN: the mean counts it instead of dropping it
    with pytest.raises(SystemExit) as stop:
        main(["fit", *tiny_args(tiny_corpus, 30), poison(20, float("nan"), validation=True)])
    assert stop.value.code == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "training diverged at step 20: the validation loss is nan" in err
    assert "last good state: lightning_logs/t/checkpoints/last.ckpt (step 10, val " in err
    names = checkpoints(workdir)
    assert names[0].startswith("best-step=10-") and names[1:] == ["last.ckpt"]  # no best-step=20-val_loss=nan
    assert torch.load(workdir / "lightning_logs/t/checkpoints/last.ckpt", weights_only=True)["global_step"] == 10


def test_a_spike_is_skipped_and_the_run_ends_finite(workdir, tiny_corpus, capsys):
    # a window of 128 steps acts once it has seen 64
    spikes = ["--divergence.skip_spikes=true", "--divergence.window=128"]
    main(["fit", *tiny_args(tiny_corpus, 100), *spikes, poison(90, 1e3)])
    out, err = capsys.readouterr()
    assert "chargpt: step 91 skipped" in err
    assert "step 90/100 | loss" in out and "| skipped 0 |" in out and "| skipped 1 |" in out  # the progress line
    last = workdir / "lightning_logs/t/checkpoints/last.ckpt"
    assert finite(last) and guard_state(last)["skipped"] == 1  # that step, and no healthy one


def test_recovery_rolls_back_lowers_the_rate_and_goes_on(workdir, tiny_corpus, capsys):
    main(["fit", *tiny_args(tiny_corpus, 40), "--divergence.recover=2", poison(25, float("nan"))])
    err = capsys.readouterr().err
    assert "step 26: the loss is nan; rollback 1 of 2 to the weights of step 20, learning rate x0.5" in err
    last = workdir / "lightning_logs/t/checkpoints/last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 40 and finite(last)
    assert guard_state(last)["rollbacks"] == 1 and guard_state(last)["scale"] == 0.5
    assert saved["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.5 * 1e-4)  # the schedule ends at half min_lr


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="--divergence.lr_factor must be in"):
        DivergenceGuard(lr_factor=2)
