"""The engine pool: worker processes behind one engine's interface (a pool decodes exactly as one engine does: the
tests parametrized over both kinds in test_engine.py); here what only a pool has: its workers' slots and queue, and
a worker that dies."""

import os
import signal
import time

import pytest

from src.serving.engine import QueueFull, Sampling
from src.serving.workers import EngineLost
from tests.helpers import tiny_gpt
from tests.serving.test_engine import Collect, alone, new_completion, start


def test_a_full_pool_refuses_new_work_and_its_queue_waits_for_a_free_slot():
    sink = Collect(1)
    engine = start(tiny_gpt(), sink, "processes", max_batch=2, max_queue=1)
    try:
        long = [new_completion([1], 100_000, i) for i in range(2)]
        engine.submit(long)  # a slot in each worker
        queued = new_completion([1], 5, 2, tag="queued")
        engine.submit([queued])
        with pytest.raises(QueueFull):
            engine.submit([new_completion([1], 5, 3)])
        assert engine.counts() == (2, 1)
        engine.cancel(long[0])  # its slot goes to the waiting completion
        assert sink.done.wait(30) and sink.reasons == {"queued": "length"}
        engine.cancel(long[1])
        assert engine.counts() == (0, 0)
    finally:
        engine.close()


def test_a_worker_that_dies_fails_only_its_own_completions_and_the_pool_goes_on():
    model = tiny_gpt()
    sink = Collect(2)
    engine = start(model, sink, "processes", max_batch=2)
    try:
        doomed, survivor = new_completion([1], 100_000, 1, tag="doomed"), new_completion([2], 300, 2, tag="survivor")
        engine.submit([doomed, survivor])  # one in each worker
        os.kill(engine.pids[0], signal.SIGKILL)  # the first placed goes to the first of two idle workers
        assert sink.done.wait(60)
        assert sink.reasons == {"doomed": "error", "survivor": "length"}
        assert "worker process decoding it exited" in sink.texts["doomed"]
        assert sink.texts["survivor"] == alone(model, [2], 300, 2, Sampling(1.0), "window")
        after = Collect(2)
        engine.sink = after
        engine.submit([new_completion([1], 5, 1, tag=0), new_completion([2], 5, 2, tag=1)])  # both to the live worker
        assert after.done.wait(30) and after.reasons == {0: "length", 1: "length"}
        os.kill(engine.pids[1], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while engine.workers_alive and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(EngineLost):
            engine.submit([new_completion([1], 5, 1)])
    finally:
        engine.close()
