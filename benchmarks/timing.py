"""Timing that a shared, drifting machine cannot skew: the things compared take turns, and medians are kept."""

import time
from collections.abc import Callable

import torch


def alternating_medians(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 0) -> dict[str, float]:
    """Median seconds of each run over ``repeats`` rounds (after ``warmup`` untimed ones); in every round each run
    goes once, in turn, so a slow spell of the machine hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}
