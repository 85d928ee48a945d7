"""The training CLI: ``python -m src.train fit --config configs/shakespeare_char.yaml`` (LightningCLI; the CLI itself
is ``src.training.cli``). Runs live in ``lightning_logs/<run_name>/``; see the README for what each holds.
"""

from __future__ import annotations

import sys

import torch

from src import already_said, disk_error, entry_point
from src.errors import UserError
from src.training.cli import build_cli, notice, resume_command
from src.training.divergence import EXIT_DIVERGED, Diverged
from src.training.fit import fit
from src.training.last_checkpoint import TrainingInterrupted


def main(args: list[str] | None = None) -> None:
    torch.set_float32_matmul_precision("high")  # TF32 on Ampere and later GPUs; no effect on the CPU
    with entry_point():
        try:
            argv = sys.argv[1:] if args is None else list(args)  # DDP's child processes start with sys.argv
            if argv[:1] == ["fit"]:
                fit(argv[1:])
            else:
                build_cli(argv)
        except UserError as err:
            notice(f"chargpt: error: {err}")  # under DDP every rank stops with the same error: rank 0 says it
            sys.exit(2)
        except OSError as err:  # a full disk under the run's logger: last.ckpt is whole (atomic writes)
            if not already_said(err):
                notice(f"chargpt: error: {disk_error(err)}")
            sys.exit(2)
        except Diverged as stop:  # every rank gets here: rank 0 says it
            argv = sys.argv[1:] if args is None else args
            notice(stop.report(lambda change: resume_command(argv, change=change)))
            sys.exit(EXIT_DIVERGED)
        except TrainingInterrupted as stop:
            if stop.step is None:
                notice(f"chargpt: {stop}; the previous last.ckpt, if any, is intact")
            else:
                notice(f"chargpt: {stop}; resume with: {resume_command(sys.argv[1:] if args is None else args)}")
            sys.exit(stop.exit_code)
        finally:
            leave_process_group()


def leave_process_group() -> None:
    """Destroy the process group of a run on several processes before the process exits. Lightning leaves it to
    the interpreter's shutdown, where gloo's threads could still be joinable when their C++ objects were destroyed:
    1 exit in 10 of a two-node run aborted after training (``terminate called without an active exception``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
