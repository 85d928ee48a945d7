"""``fit(args) -> FitResult``: what a run reached, for code that trains (the ladder, the tuner), and its failures as
exceptions rather than exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.errors import UserError
from src.training.fit import fit
from tests.helpers import tiny_args

pytestmark = pytest.mark.slow


def test_fit_returns_what_the_run_reached(workdir, tiny_corpus):
    result = fit([*tiny_args(tiny_corpus, max_steps=20), "--fit_summary.enabled=false"])
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    best, final = ckpt["callbacks"]["FitSummary"]["best"], ckpt["callbacks"]["FitSummary"]["final"]
    assert (result.best_val, result.best_step) == tuple(best)  # kept with no summary printed
    assert (result.final_val, result.final_step) == tuple(final) and result.final_step == result.steps == 20
    assert result.run_dir == Path("lightning_logs/t") and (result.run_dir / "config.yaml").is_file()
    assert result.best_checkpoint.is_file() and f"val_loss={result.best_val:.4f}" in result.best_checkpoint.name
    params = sum(v.numel() for k, v in ckpt["state_dict"].items() if k.startswith("model."))
    assert result.params == params and 0 < result.wall < 120


def test_a_resumed_fit_reports_the_whole_run(workdir, tiny_corpus):
    fit(tiny_args(tiny_corpus, max_steps=10))
    result = fit([*tiny_args(tiny_corpus, max_steps=20), "--ckpt_path=last"])
    assert result.steps == 20 and result.best_step in (10, 20)


def test_fit_raises_bad_input_for_its_caller(workdir, tiny_corpus):
    with pytest.raises(UserError, match="max_steps must be a positive number"):
        fit(tiny_args(tiny_corpus, max_steps=0))
