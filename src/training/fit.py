"""``fit(args) -> FitResult``: one training run, as ``python -m src.train fit ARGS`` makes it, for code that calls
it (the CLI, benchmarks/lecture_ladder.py, src.tune). Its failures are exceptions: ``UserError`` (bad input),
``Diverged`` (a NaN or infinite step), ``TrainingInterrupted`` (Ctrl-C, SIGTERM); the CLI turns them into exit codes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from src.training.callbacks import FitSummary
from src.training.cli import LOG_ROOT, build_cli
from src.training.last_checkpoint import LastCheckpoint


@dataclass(frozen=True)
class FitResult:
    best_val: float | None  # None when no evaluation ran
    best_step: int | None
    final_val: float | None  # the last evaluation's, at the end of the run
    final_step: int | None
    steps: int  # optimizer steps done, a resumed run's earlier ones included
    params: int  # the model's parameters
    wall: float  # seconds this call took, imports excluded
    run_dir: Path  # lightning_logs/<run_name>: config.yaml, the events, checkpoints/
    last_checkpoint: Path | None
    best_checkpoint: Path | None


def fit(args: list[str], callbacks: tuple = ()) -> FitResult:
    """Train with ``args`` as ``fit`` takes them (``["--config", "configs/x.yaml", "--trainer.max_steps", "100"]``;
    the defaults are configs/shakespeare_char.yaml's) and return what the run reached; ``callbacks`` (Lightning
    callbacks) join the run's own."""
    started = time.perf_counter()
    cli = build_cli(["fit", *args], callbacks=callbacks)
    trainer, config = cli.trainer, cli.config.fit
    summary = next(c for c in trainer.callbacks if isinstance(c, FitSummary))
    best, final = summary.best, summary.final
    last = next((c.path for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
    best_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    return FitResult(
        best_val=best[0] if best else None,
        best_step=best[1] if best else None,
        final_val=final[0] if final else None,
        final_step=final[1] if final else None,
        steps=trainer.global_step,
        params=trainer.lightning_module.model.num_params(),
        wall=time.perf_counter() - started,
        run_dir=Path(config.trainer.default_root_dir or LOG_ROOT) / config.run_name,
        last_checkpoint=last if last is not None and last.is_file() else None,
        best_checkpoint=Path(best_path) if best_path else None,
    )
