"""What the divergence guard's per-step check costs: training runs with it on and off, alternating, and the check
alone on the config's model.

python benchmarks/bench_divergence.py                                   # the default config, 300 steps, 3 pairs
python benchmarks/bench_divergence.py --config configs/speedrun_cpu.yaml --steps 300

Each run is ``python -m src.train fit`` (benchmarks/bench_levers.py's ``run``) with ``--divergence.enabled`` true
or false, one evaluation at the end; its step time is the batch's tokens over the median training tokens/s
(evaluation excluded). Then the check alone, as the guard runs it: the global gradient norm of the model's
gradients, stacked with the loss and read on the host, timed over many repeats.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_levers import run  # noqa: E402


def check_alone(config: str, repeats: int) -> float:
    """Milliseconds of one check on the config's model with random gradients."""
    from src.training.cli import build_cli

    cli = build_cli(["--config", config, "--trainer.logger=false"], run=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    cli.model.build_network(cli.datamodule.vocab)
    params = [p for p in cli.model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    loss = torch.tensor(1.5)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        torch.stack([loss, norm]).tolist()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shakespeare_char.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=200, help="repeats of the check alone")
    args = parser.parse_args()
    import yaml

    data = yaml.safe_load((REPO / args.config).read_text())["data"]
    tokens = data["batch_size"] * data["block_size"]
    flags = ["--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps)]
    flags += ["--sample.every_n_steps", "0", "--attention_maps.enabled", "false"]
    ms = {"on": [], "off": []}
    for pair in range(args.pairs):
        for state in ("on", "off") if pair % 2 == 0 else ("off", "on"):
            enabled = "true" if state == "on" else "false"
            r = run(args.config, [*flags, "--divergence.enabled", enabled], 1337, f"guard-{state}", keep=False)
            ms[state].append(tokens / r["tokens_per_sec"] * 1e3)
            print(f"pair {pair + 1} check {state:<3} {ms[state][-1]:7.2f} ms/step  wall {r['wall']:5.1f} s", flush=True)
    on, off = statistics.median(ms["on"]), statistics.median(ms["off"])
    print(f"{args.config}: median {on:.2f} ms/step with the check, {off:.2f} without ({(on - off) / off:+.1%})")
    print(f"the check alone: {check_alone(args.config, args.repeats):.3f} ms")


if __name__ == "__main__":
    main()
