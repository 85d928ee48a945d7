"""Would the spike rule (``--divergence.skip_spikes``) skip a healthy step? Each seed's run records every step's loss
and gradient norm as the guard reads them; the rule then replays over the records, with the rule's own code.

python benchmarks/bench_spikes.py                       # the default config, seeds 1337, 1 and 2 (~12 min a seed)
python benchmarks/bench_spikes.py --config configs/speedrun_cpu.yaml --window 64 128 --sigma 6 8

A run with the rule off is the run with the rule on for as long as the rule skips nothing, so one recorded run per
seed answers for every window and sigma. Printed: each run's best val, then per window and sigma, the steps the rule
would skip on the loss, on the gradient norm, and on either (the rule).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from src.training.divergence import DivergenceGuard  # noqa: E402


class Trace(L.Callback):
    """Every step's (loss, gradient norm) as DivergenceGuard computes them, written to ``path`` when fit ends."""

    def __init__(self, path: str) -> None:
        self.path, self.steps = path, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        self.steps.append([pl_module.step_loss.float().item(), norm.float().item()])

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.path).write_text(json.dumps(self.steps))


def skipped(steps: list[list[float]], window: int, sigma: float) -> dict[str, list[int]]:
    """The steps (1-based) the rule would skip, judging the loss alone, the norm alone, and both (the rule)."""
    found = {}
    for name, keep in (("loss", (0,)), ("norm", (1,)), ("rule", (0, 1))):
        guard, found[name] = DivergenceGuard(window=window, sigma=sigma), []
        for step, values in enumerate(steps, 1):
            judged = tuple(v if i in keep else 0.0 for i, v in enumerate(values))
            if guard._spike(*judged):
                found[name].append(step)
            guard.history.append(judged)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shakespeare_char.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--window", type=int, nargs="+", default=[128])
    parser.add_argument("--sigma", type=float, nargs="+", default=[6.0])
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="after --: flags for src.train fit")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))  # here, not at the top: runs import Trace from this module
    from bench_levers import run

    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    traces = {}
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            path = Path(folder) / f"{seed}.json"
            spec = {"class_path": "benchmarks.bench_spikes.Trace", "init_args": {"path": str(path)}}
            r = run(args.config, [*flags, f"--trainer.callbacks+={json.dumps(spec)}"], seed, "spikes", keep=False)
            traces[seed] = json.loads(path.read_text())
            curve = ", ".join(f"{v:.4f}" for v in r["val"])
            print(f"seed {seed}: {len(traces[seed])} steps, best val {min(r['val']):.4f} ({curve})", flush=True)
    print("| window | sigma | seed | skipped on the loss | on the gradient norm | by the rule (either) |")
    for window in args.window:
        for sigma in args.sigma:
            for seed, steps in traces.items():
                found = skipped(steps, window, sigma)
                cells = [", ".join(map(str, found[k])) or "none" for k in ("loss", "norm", "rule")]
                print(f"| {window} | {sigma:g} | {seed} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
