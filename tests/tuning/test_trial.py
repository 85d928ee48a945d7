"""Reporting to Optuna: trials that reach their evaluations at different steps (each budgeted trial plans its own)
are compared evaluation by evaluation, so the pruner can stop the worse one."""

from types import SimpleNamespace

import optuna
import pytest
import torch

from src.tuning.trial import ReportValLoss


def evaluate(callback: ReportValLoss, step: int, val: float) -> None:
    trainer = SimpleNamespace(sanity_checking=False, global_step=step, callback_metrics={"val_loss": torch.tensor(val)})
    callback.on_validation_end(trainer, None)


def test_trials_with_different_step_counts_are_pruned_at_the_same_evaluation():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    fast = ReportValLoss(study.ask())  # a fast machine's trial: evaluations at steps 500 and 1,000
    evaluate(fast, 500, 1.8)
    evaluate(fast, 1000, 1.5)
    study.tell(fast.trial, 1.5)
    slow = ReportValLoss(study.ask())  # a slower shape in the same budget: steps 200 and 400, worse at the first
    with pytest.raises(optuna.TrialPruned, match=r"pruned at evaluation 1, step 200 \(val 2.1000\)"):
        evaluate(slow, 200, 2.1)
    assert study.trials[0].intermediate_values == pytest.approx({1: 1.8, 2: 1.5})
