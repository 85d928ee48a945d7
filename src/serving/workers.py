"""Engines in processes of their own, behind the interface of one ``Engine``: what lets a CPU server use more than
one core. In one process the model's calls hold Python's GIL between kernels, so a second decoding thread slows both
(docs/serving.md measures it); a second process decodes beside the first.

Completions wait here and go, when a worker has a free slot, to the one with the fewest in flight; each worker's
``Engine`` decodes them exactly as the server's own engine would (the same weights, dtype and thread count), so the
text does not depend on where a completion ran. Workers get plain data (the model's description and its tensors) and
send back plain data (each round's text, finish reasons, scores and token counts). A worker that dies fails only the
completions it held; the others go on.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from src.checkpoints.build import build, describe
from src.data.tokenizer import Tokenizer
from src.model import LanguageModel
from src.serving.engine import Completion, Engine, Event, QueueFull, check_servable


class EngineLost(Exception):
    """Every worker process has exited."""


@dataclass(eq=False)
class _Worker:
    process: multiprocessing.Process
    commands: object  # the write end of a pipe to the worker
    events: object  # the read end of a pipe from it
    slots: int
    held: dict[int, Completion] = field(default_factory=dict)  # key -> a completion it decodes
    alive: bool = True


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process is started with: the model as plain values and tensors, and its engine's settings."""

    values: dict  # src.checkpoints.build.describe: the model's and the tokenizer's description
    state: dict[str, torch.Tensor]
    dtype: torch.dtype
    slots: int
    max_queue: int
    cache: str
    threads: int
    interval: float  # seconds a worker may hold its rounds' text before sending it (a first token goes at once)


class EnginePool:
    """``workers`` engines of ``max_batch`` slots between them, each in a spawned process with ``threads`` CPU
    threads; up to ``max_queue`` more completions wait here. ``sink`` gets each worker's rounds from a thread that
    reads that worker's pipe."""

    def __init__(
        self,
        model: LanguageModel,
        tokenizer: Tokenizer,
        sink: Callable[[list[Event]], None],
        max_batch: int = 8,
        max_queue: int = 64,
        cache: str = "window",
        workers: int = 2,
        threads: int = 1,
        interval: float = 0.01,
    ) -> None:
        if not 1 <= workers <= max_batch:
            raise ValueError(f"workers must be between 1 and max_batch ({max_batch}), got {workers}")
        check_servable(model)  # here, before any worker starts, so that the refusal reads as it does in-process
        self.sink, self.max_batch, self.max_queue = sink, max_batch, max_queue
        weight = next(model.parameters())
        if weight.device.type != "cpu":
            raise ValueError(f"worker processes decode on the CPU; the model is on {weight.device}")
        values = describe(model, tokenizer)
        state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        context = multiprocessing.get_context("spawn")  # the one start method on every OS; fork is unsafe with threads
        self.workers: list[_Worker] = []
        for i in range(workers):
            slots = max_batch // workers + (i < max_batch % workers)
            commands_in, commands = context.Pipe(duplex=False)
            events, events_out = context.Pipe(duplex=False)
            settings = WorkerSettings(
                values, state, weight.dtype, slots, max_batch + max_queue, cache, threads, interval
            )
            process = context.Process(target=_work, args=(commands_in, events_out, settings), daemon=True)
            process.start()  # the workers load the model while the server starts
            commands_in.close()
            events_out.close()
            self.workers.append(_Worker(process, commands, events, slots))
        self.waiting: collections.deque[Completion] = collections.deque()
        self.placed: dict[Completion, tuple[_Worker, int]] = {}
        self.keys = itertools.count()
        self.lock = threading.Lock()
        self.readers: list[threading.Thread] = []

    def start(self) -> EnginePool:
        """Wait until every worker has its model, then read their rounds."""
        for worker in self.workers:
            try:
                ready = worker.events.recv()
            except EOFError:
                self.close()
                raise RuntimeError(f"a worker process exited while loading the model (exit code "
                                   f"{worker.process.exitcode}): see its error above") from None  # fmt: skip
            assert ready == "ready", ready
        for worker in self.workers:
            reader = threading.Thread(target=self._read, args=(worker,), name="chargpt-worker-reader", daemon=True)
            reader.start()
            self.readers.append(reader)
        return self

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.commands.send(("close", None))
            except OSError:  # it has exited already
                pass
        for worker in self.workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.terminate()
        for reader in self.readers:
            reader.join(timeout=10)

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self.workers]

    @property
    def workers_alive(self) -> int:
        with self.lock:
            return sum(worker.alive for worker in self.workers)

    def submit(self, completions: list[Completion]) -> None:
        """Queue these completions (all or none: ``QueueFull`` when the queue cannot take them all)."""
        with self.lock:
            if not any(worker.alive for worker in self.workers):
                raise EngineLost
            free = sum(worker.slots - len(worker.held) for worker in self.workers if worker.alive)
            if len(self.waiting) + len(completions) > self.max_queue + max(free, 0):
                raise QueueFull
            self.waiting.extend(completions)
            self._place()

    def cancel(self, completion: Completion) -> None:
        """Stop decoding ``completion``: waiting, it leaves the queue; placed, its worker frees its slot."""
        with self.lock:
            completion.cancelled = True
            if completion in self.waiting:
                self.waiting.remove(completion)
            elif completion in self.placed:
                worker, key = self.placed.pop(completion)
                del worker.held[key]
                self._send(worker, ("cancel", key))
                self._place()

    def counts(self) -> tuple[int, int]:
        """(completions being decoded, completions waiting)."""
        with self.lock:
            return sum(len(worker.held) for worker in self.workers), len(self.waiting)

    def _place(self) -> None:
        """Hand waiting completions to the workers with free slots, the least busy first (the lock held)."""
        batches: dict[_Worker, list] = collections.defaultdict(list)
        while self.waiting:
            worker = max((w for w in self.workers if w.alive), key=lambda w: w.slots - len(w.held), default=None)
            if worker is None or len(worker.held) >= worker.slots:
                break
            completion, key = self.waiting.popleft(), next(self.keys)
            worker.held[key] = completion
            self.placed[completion] = (worker, key)
            batches[worker].append((key, completion.request))
        for worker, batch in batches.items():
            self._send(worker, ("submit", batch))

    def _send(self, worker: _Worker, message: tuple) -> None:
        try:
            worker.commands.send(message)
        except OSError:  # the worker has exited: its reader fails what it held
            pass

    def _read(self, worker: _Worker) -> None:
        """A worker's rounds, handed to the sink as the server's own engine hands them."""
        while True:
            try:
                rounds = worker.events.recv()
            except (EOFError, OSError):
                return self._lost(worker)
            events: list[Event] = []
            with self.lock:
                for key, text, finish_reason, scores, produced in rounds:
                    completion = worker.held.get(key)
                    if completion is None:  # cancelled meanwhile
                        continue
                    completion.produced = produced
                    if finish_reason is not None:
                        completion.finish_reason = finish_reason
                        del worker.held[key], self.placed[completion]
                    events.append((completion, text, finish_reason, scores))
                self._place()
            if events:
                self.sink(events)

    def _lost(self, worker: _Worker) -> None:
        worker.process.join(timeout=5)  # its pipe has closed: it is exiting (outside the lock: submit goes on)
        with self.lock:
            worker.alive = False
            failed = f"the worker process decoding it exited (exit code {worker.process.exitcode})"
            lost = list(worker.held.values())
            if not any(w.alive for w in self.workers):
                lost += list(self.waiting)
                self.waiting.clear()
            for completion in lost:
                completion.finish_reason = "error"
                self.placed.pop(completion, None)
            worker.held.clear()
        closing = worker.process.exitcode == 0  # it was told to close
        if lost and not closing:
            self.sink([(completion, failed, "error", []) for completion in lost])


def _work(commands, events, settings: WorkerSettings) -> None:
    """A worker process: the model from plain values, an ``Engine`` over it, and the pipes' messages."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server closes us
    torch.set_num_threads(settings.threads)
    model, tokenizer = build(settings.values)
    model.load_state_dict(settings.state)
    model.to(settings.dtype)
    held: dict[int, Completion] = {}
    message: list[tuple] = []
    sent = time.perf_counter()

    def sink(rounds: list[Event]) -> None:
        nonlocal sent
        urgent = False  # a first token (time to first token) or a finish (the pool's free slots) goes at once
        for completion, text, finish_reason, scores in rounds:
            message.append((completion.tag, text, finish_reason, scores, completion.produced))
            urgent = urgent or completion.produced <= 1 or finish_reason is not None
            if finish_reason is not None:
                held.pop(completion.tag, None)
        if message and (urgent or time.perf_counter() - sent >= settings.interval):
            events.send(message)
            message.clear()
            sent = time.perf_counter()

    engine = Engine(model, tokenizer, sink, settings.slots, settings.max_queue, settings.cache).start()
    events.send("ready")
    try:
        while True:
            kind, payload = commands.recv()
            if kind == "submit":
                batch = [Completion(request, tag=key) for key, request in payload]
                held.update((completion.tag, completion) for completion in batch)
                engine.submit(batch)
            elif kind == "cancel" and payload in held:
                engine.cancel(held.pop(payload))
            elif kind == "close":
                return
    except EOFError:  # the server has gone
        return
    finally:
        engine.close()
