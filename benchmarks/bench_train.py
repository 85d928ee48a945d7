"""Training tokens/s and peak memory of a config on this device: through Lightning's Trainer.fit (logging on,
checkpointing off) and through a plain PyTorch loop over the same model, batches and optimizer.

    python benchmarks/bench_train.py --config configs/shakespeare_char.yaml
    python benchmarks/bench_train.py --config configs/gpt_lecture.yaml --steps 4 --model.compile false
    python benchmarks/bench_train.py --config configs/gpt_lecture.yaml --precision bf16-mixed
Each path runs in its own process, so peak memory (max RSS on CPU, max allocated on CUDA) is its own.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch


def build(args, cli_args: list[str]):
    """The module and data module exactly as ``python -m src.train`` builds them from these options, with a Trainer
    that holds the run's precision, clipping and step count (what ``configure_optimizers`` reads)."""
    from src.training.cli import build_cli

    config = ["--config", args.config] if args.config else []
    settings = [f"--trainer.precision={args.precision}", f"--trainer.max_steps={args.warmup + args.steps}"]
    cli = build_cli([*config, *cli_args, *settings, "--trainer.logger=false"], run=False)
    return cli.datamodule, cli.model, cli.trainer


def peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fit(dm, module, steps: int, warmup: int, precision: str, device: str, clip: float | None) -> float:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from src.training.callbacks import LearningRates
    from src.training.cli import RUN_CALLBACKS

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == warmup:
                if device == "cuda":
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_end(self, trainer, *args):
            if device == "cuda":
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        max_steps=warmup + steps,
        limit_val_batches=0,
        logger=TensorBoardLogger(tempfile.mkdtemp(), name="bench"),
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=clip,  # the config's, as the CLI would run it
        # what a CLI run brings, so that the overhead measured is the user's
        callbacks=[clock, LearningRates(logging_interval="step"), *(c() for c in RUN_CALLBACKS.values())],
    )
    trainer.fit(module, datamodule=dm)
    return clock.seconds


def run_loop(dm, module, trainer, steps: int, warmup: int, precision: str, device: str) -> float:
    dm.prepare_data()
    dm.setup("fit")
    module.build_network(dm.vocab)
    module.configure_model()  # compiles in place when model.compile is set, as the Trainer does
    module.trainer = trainer
    optimization = module.configure_optimizers()  # the same optimizer, fused or not, and schedule as a fit
    optimizer, scheduler = optimization["optimizer"], optimization["lr_scheduler"]["scheduler"]
    model = module.model.to(device).train()
    stream = iter(dm.train_dataloader())
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    for step in range(warmup + steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = (t.to(device, non_blocking=True) for t in next(stream))
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        if trainer.gradient_clip_val:  # the config's (the lecture's configs clip nothing)
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def child(args, cli_args: list[str]) -> None:
    torch.manual_seed(0)
    dm, module, trainer = build(args, cli_args)
    if args.mode == "fit":
        seconds = run_fit(dm, module, args.steps, args.warmup, args.precision, args.device, trainer.gradient_clip_val)
    else:
        seconds = run_loop(dm, module, trainer, args.steps, args.warmup, args.precision, args.device)
    tokens = args.steps * dm.hparams.batch_size * dm.hparams.block_size
    print(
        json.dumps(
            {
                "tokens_per_sec": tokens / seconds,
                "ms_per_step": 1e3 * seconds / args.steps,
                "peak_mib": peak_mib(args.device),
                "params": module.model.num_params(),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a configs/*.yaml file (its model and data sections are used)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--precision", default="32-true", help="32-true or bf16-mixed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3, help="runs of each path, alternating; medians are printed")
    p.add_argument("--mode", choices=("both", "fit", "loop"), default="both")
    args, rest = p.parse_known_args()  # the rest are training options: --model.n_layer 4 --data.batch_size 12 ...
    if args.mode != "both":
        return child(args, rest)
    runs: dict[str, list[dict]] = {"fit": [], "loop": []}
    for _ in range(args.repeats):  # alternating, so a slow spell of a shared machine hits both paths alike
        for mode, results in runs.items():
            # the child's --mode last, where argparse's last value wins: a --mode both given here must not recurse
            cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    fit, loop = (sorted(r, key=lambda x: x["tokens_per_sec"])[len(r) // 2] for r in runs.values())  # medians
    print(
        f"{args.config or 'defaults'} {' '.join(rest)} | {fit['params']:,} params | {args.device}, "
        f"{args.precision}, {torch.get_num_threads()} threads | {args.steps} timed steps, median of {args.repeats} runs"
    )
    for name, r in (("Trainer.fit", fit), ("plain loop", loop)):
        print(
            f"{name:12s} {r['tokens_per_sec']:10,.0f} tokens/s {r['ms_per_step']:9.1f} ms/step "
            f"peak {r['peak_mib']:8,.0f} MiB"
        )
    print(f"Lightning overhead: {100 * (loop['tokens_per_sec'] / fit['tokens_per_sec'] - 1):+.1f}%")


if __name__ == "__main__":
    main()
