"""--trainer.max_time plans the step count instead of cutting the run: against a faked clock whose every training
step takes a known time, so the plan is known in advance."""

from __future__ import annotations

import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.train import main
from src.training import budget
from tests.helpers import StepClock, tiny_args, with_callback

pytestmark = pytest.mark.slow


@pytest.fixture
def fake_clock(monkeypatch):
    StepClock.now = 0.0
    monkeypatch.setattr(budget, "clock", lambda: StepClock.now)


def clock(seconds: float = 0.1, interrupt_at: int = 0) -> str:
    return with_callback("StepClock", seconds=seconds, interrupt_at=interrupt_at)


def budgeted(corpus, seconds: int, run_name: str = "t", **extra) -> list[str]:
    """tiny_args under a budget, with the config's own step count (no --trainer.max_steps flag): the plan's step
    is the end of the warm-up (5), with two evaluations and no samples."""
    args = [a for a in tiny_args(corpus, run_name=run_name, **extra) if not a.startswith("--trainer.max_steps")]
    return [*args, f"--trainer.max_time=00:00:00:{seconds:02d}", "--budget.evaluations=2", "--sample.every_n_steps=0"]


def planned(err: str) -> int:
    return int(re.search(r"budget: ([\d,]+) steps at", err)[1].replace(",", ""))


def last(workdir, run: str = "t") -> dict:
    return torch.load(workdir / f"lightning_logs/{run}/checkpoints/last.ckpt", weights_only=True)


def expected_plan(budget_seconds: float, step_seconds: float) -> int:
    # planned at step 5: two evaluations costed at 0.5 s each past their batches (0 s on this clock) and 2 s for
    # the end; the steps that fit the rest, less the remainder that would leave the last evaluation off the end
    steps = 5 + int((budget_seconds - 5 * step_seconds - (2 * 0.5 + 2.0)) / step_seconds)
    return steps - steps % 2


@pytest.mark.parametrize("step_seconds", [0.1, 0.2])
def test_the_plan_fills_the_budget_at_the_measured_speed(workdir, tiny_corpus, fake_clock, capsys, step_seconds):
    main(["fit", *budgeted(tiny_corpus, 20), clock(step_seconds)])
    err = capsys.readouterr().err
    steps = planned(err)
    assert steps == expected_plan(20, step_seconds)  # 164 at 0.1 s a step, 82 at 0.2
    assert f"repeat exactly with --trainer.max_steps {steps} --trainer.val_check_interval {steps // 2}" in err
    saved = last(workdir)
    assert saved["global_step"] == steps  # the config's max_steps (20) did not cap it
    # the schedule reached min_lr on the last planned step, not before
    assert saved["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(1e-4)
    events = EventAccumulator(str(workdir / "lightning_logs/t"))
    events.Reload()
    assert [e.step + 1 for e in events.Scalars("val_loss")] == [
        steps // 2,
        steps,
    ]  # two evaluations, the last at the end


def test_a_budgeted_run_takes_the_steps_of_its_plan_given_as_max_steps_and_resumes_exactly(
    workdir, tiny_corpus, fake_clock, capsys
):
    main(["fit", *budgeted(tiny_corpus, 10, "budget"), clock()])
    steps = planned(capsys.readouterr().err)
    interval = {"trainer.val_check_interval": steps // 2, "sample.every_n_steps": 0}
    main(["fit", *tiny_args(tiny_corpus, steps, "steps", **interval)])
    # stopped by Ctrl-C after the plan, then resumed with the same command: it finishes the plan
    StepClock.now = 0.0
    with pytest.raises(SystemExit) as stop:
        main(["fit", *budgeted(tiny_corpus, 10, "parts"), clock(interrupt_at=steps // 2 + 3)])
    assert stop.value.code == 130
    main(["fit", *budgeted(tiny_corpus, 10, "parts"), clock(), "--ckpt_path=last"])
    runs = {run: last(workdir, run) for run in ("budget", "steps", "parts")}
    assert {run: saved["global_step"] for run, saved in runs.items()} == dict.fromkeys(runs, steps)
    for name, weights in runs["budget"]["state_dict"].items():
        assert torch.equal(weights, runs["steps"]["state_dict"][name]), name
        assert torch.equal(weights, runs["parts"]["state_dict"][name]), name


def test_max_steps_beside_a_budget_caps_the_plan(workdir, tiny_corpus, fake_clock, capsys):
    main(["fit", *budgeted(tiny_corpus, 20), "--trainer.max_steps=31", clock()])
    assert planned(capsys.readouterr().err) == 30  # the cap, less the remainder that leaves the last evaluation out
    assert last(workdir)["global_step"] == 30


def test_a_budget_too_small_for_the_warm_up_and_one_evaluation_is_refused(workdir, tiny_corpus, fake_clock, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", *budgeted(tiny_corpus, 3), clock()])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"chargpt: error: --trainer.max_time 0:00:03 fits ~5 steps at 100 ms a step, but the warm-up and one "
        r"evaluation need 6: give at least 0:00:04",
        err,
    ), err


def test_a_bad_duration_is_refused_with_the_format(workdir, tiny_corpus, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", *tiny_args(tiny_corpus), "--trainer.max_time=10m"])
    assert stop.value.code == 2
    assert "--trainer.max_time '10m': give DD:HH:MM:SS, e.g. 00:00:10:00" in capsys.readouterr().err


def test_a_budget_is_refused_for_a_run_resumed_past_its_warm_up_without_one(workdir, tiny_corpus, fake_clock, capsys):
    main(["fit", *tiny_args(tiny_corpus, 10)])
    with pytest.raises(SystemExit) as stop:
        main(["fit", *budgeted(tiny_corpus, 20), "--ckpt_path=last"])
    assert stop.value.code == 2
    assert "this run is at step 10, past the warm-up in which a budget is planned" in capsys.readouterr().err
