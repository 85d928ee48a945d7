"""Two-node training launched many times in a row: does every rank of every launch exit 0?

python benchmarks/bench_nodes.py --launches 30
python benchmarks/bench_nodes.py --launches 10 --launcher torchrun

Each launch is a tiny ``fit`` on two "nodes" of one process each on 127.0.0.1 (gloo), started as torchrun or SLURM's
srun would start them (tests/test_nodes.py checks what they train). A scheduler counts a job as failed when any rank
exits non-zero, so a rank that aborts after training (``terminate called without an active exception``) fails a
finished job. Printed per launch: each node's exit status and wall time, and whether it aborted or hung; then the
counts.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import TINY_TEXT, start_nodes, tiny_args, wait_nodes  # noqa: E402

NODES = {"model.dropout": 0.0, "sample.every_n_steps": 0, "attention_maps.enabled": "false", "trainer.devices": 1}


def launch(folder: Path, launcher: str, timeout: float) -> tuple[list[int | None], float, bool]:
    """Each node's exit status (None: still running at ``timeout``), the wall time, and whether one aborted."""
    corpus = folder / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    started = time.perf_counter()
    procs = start_nodes(tiny_args(corpus, 10, "nodes", **NODES), folder, launcher)
    outputs = wait_nodes(procs, timeout)
    codes = [proc.returncode if out is not None else None for proc, out in zip(procs, outputs)]
    aborted = any(out is not None and "terminate called" in out for out in outputs)
    return codes, time.perf_counter() - started, aborted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--launcher", choices=["slurm", "torchrun", "both"], default="both", help="both: alternate")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a launch counts as hung")
    args = parser.parse_args()
    launchers = ["slurm", "torchrun"] if args.launcher == "both" else [args.launcher]
    clean = aborted = hung = 0
    for i in range(args.launches):
        launcher = launchers[i % len(launchers)]
        with tempfile.TemporaryDirectory() as folder:
            codes, wall, abort = launch(Path(folder), launcher, args.timeout)
        clean += all(code == 0 for code in codes)
        aborted += abort
        hung += None in codes
        print(f"launch {i + 1:>3} {launcher:<8} exit {codes}  {wall:5.1f} s" + ("  aborted" if abort else ""))
    print(f"{args.launches} launches: {clean} with every rank exit 0, {aborted} aborted, {hung} hung")


if __name__ == "__main__":
    main()
