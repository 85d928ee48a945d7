"""The server under load: ``python -m src.serve`` on a checkpoint, driven by concurrent streaming clients.

python benchmarks/bench_serve.py --ckpt_path lightning_logs/shakespeare_char/checkpoints/last.ckpt
python benchmarks/bench_serve.py --ckpt_path ... --clients 8 --soak 120     # 16 clients for 2 minutes, 10% leave

For 1, 4, 8 and 16 clients (``--clients``), each client sends ``--requests`` streamed completions of ``--tokens``
characters one after another (or stops at ``--seconds``); printed per load: aggregate tokens/s, tokens/s of one
client's stream, p50 and p95 time to first token, errors, and the CPU cores the server and the clients kept busy
(CPU seconds per second of wall time). The same load then runs against a server with batching
off (``--max_batch 1``: one completion at a time, the rest queued) for the ratio. ``--soak S``: 16 clients for S
seconds, 10% of their requests disconnecting mid-stream; printed: failures among the others, the server's resident
memory each 10 s (from its /metrics), and the slots still taken at the end. Everything stays on 127.0.0.1; the
clients are raw asyncio HTTP (no client library's overhead on the CPU the server shares).
"""

import argparse
import asyncio
import json
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Server:
    def __init__(self, ckpt_path: str, *flags: str) -> None:
        command = [sys.executable, "-m", "src.serve", "--ckpt_path", ckpt_path, "--port", "0", *flags]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        for line in self.process.stdout:
            found = re.search(r"API\s+http://127\.0\.0\.1:(\d+)/v1", line)
            if found:
                self.port = int(found.group(1))
                return
        raise SystemExit(f"the server did not start: {' '.join(command)}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


async def http(port: int, method: str, path: str, body: dict | None = None):
    """Open a request; returns (status, reader, writer) with the headers read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    writer.write(head.encode() + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    return status, reader, writer


async def chunks(reader):
    """The body of a chunked response, a chunk at a time."""
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readline()


async def metrics(port: int) -> dict[str, float]:
    status, reader, writer = await http(port, "GET", "/metrics")
    text = (await reader.read()).decode()
    writer.close()
    if "\r\n" in text[:10]:  # chunked
        text = re.sub(r"(?m)^[0-9a-f]+\r\n", "", text)
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and " " in line:
            name, value = line.rsplit(" ", 1)
            try:
                values[name] = float(value)
            except ValueError:
                pass
    return values


async def one_request(port: int, tokens: int, leave_after: int | None, record: dict, logprobs: int | None) -> None:
    """One streamed completion; ``leave_after`` characters: disconnect then."""
    started = time.perf_counter()
    body = {"prompt": "\n", "max_tokens": tokens, "temperature": 0.8, "stream": True}
    if logprobs is not None:
        body["logprobs"] = logprobs
    body["stream_options"] = {"include_usage": True}
    try:
        status, reader, writer = await http(port, "POST", "/v1/completions", body)
    except OSError:
        record["errors"] += 1
        return
    first, produced, done = None, 0, False
    try:
        if status != 200:
            record["errors"] += 1
            return
        buffer = b""
        async for chunk in chunks(reader):
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                data = event.removeprefix(b"data: ")
                if data == b"[DONE]":
                    done = True
                    continue
                message = json.loads(data)
                if "error" in message:
                    record["errors"] += 1
                    return
                for choice in message["choices"]:
                    if choice["text"] and first is None:
                        first = time.perf_counter()
                    produced += len(choice["text"])
                if leave_after is not None and produced >= leave_after:
                    record["left"] += 1
                    return
        if not done or produced != tokens:
            record["errors"] += 1
            return
        end = time.perf_counter()
        record["ttft"].append(first - started)
        record["stream_rate"].append((produced - 1) / max(end - first, 1e-9))
        record["tokens"] += produced
    except (OSError, asyncio.IncompleteReadError, ValueError):
        record["errors"] += 1
    finally:
        writer.close()


async def load(
    port: int, clients: int, requests: int, tokens: int, seconds: float, leave: float = 0.0, logprobs: int | None = None
) -> dict:
    record = {"errors": 0, "left": 0, "ttft": [], "stream_rate": [], "tokens": 0}
    deadline = time.perf_counter() + seconds
    rng = random.Random(0)

    async def client() -> None:
        for _ in range(requests):
            if time.perf_counter() > deadline:
                return
            leave_after = rng.randrange(1, tokens) if rng.random() < leave else None
            await one_request(port, tokens, leave_after, record, logprobs)

    before, cpu = await server_cpu(port), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    record["wall"] = time.perf_counter() - started
    record["cpu"] = time.process_time() - cpu
    record["server_cpu"] = await server_cpu(port) - before
    return record


async def server_cpu(port: int) -> float:
    """CPU seconds of the server and its worker processes (nan where the OS does not report them)."""
    found = [v for name, v in (await metrics(port)).items() if name.endswith("process_cpu_seconds_total")]
    return sum(found) if found else float("nan")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def report(label: str, clients: int, r: dict) -> float:
    rate = r["tokens"] / r["wall"]
    per_client = statistics.median(r["stream_rate"]) if r["stream_rate"] else 0
    ttft = r["ttft"] or [float("nan")]
    print(
        f"{label:<10} {clients:>7} {rate:>12,.0f} {per_client:>12,.0f} {percentile(ttft, 50) * 1000:>9.0f} "
        f"{percentile(ttft, 95) * 1000:>9.0f} {r['errors']:>6} {len(r['ttft']):>8} "
        f"{r['server_cpu'] / r['wall']:>10.2f} {r['cpu'] / r['wall']:>10.2f}",
        flush=True,
    )
    return rate


def sweep(args, label: str, flags: list[str], logprobs: int | None = None) -> dict[int, float]:
    server = Server(args.ckpt_path, *flags)
    try:
        asyncio.run(load(server.port, 1, 2, 50, 30))  # warm-up
        rates = {}
        for c in args.clients:
            rates[c] = report(label, c, asyncio.run(load(server.port, c, args.requests, args.tokens, args.seconds,
                                                         logprobs=logprobs)))  # fmt: skip
        return rates
    finally:
        server.close()


def engine_alone(args) -> tuple[dict[int, float], str]:
    """The server's engines with no HTTP: the same completions (a newline, ``--tokens`` characters, temperature
    0.8), ``clients`` at once, with src.serve's default workers and threads: tokens/s for each load, and what ran."""
    import threading

    import torch

    from src.checkpoints.load import load_model
    from src.serve import place_workers
    from src.serving.engine import Completion, Engine, Request, Sampling
    from src.serving.workers import EnginePool

    model, tokenizer = load_model(args.ckpt_path, torch.device("cpu"))
    defaults = argparse.Namespace(workers=None, threads=None, max_batch=16)
    place_workers(defaults, torch.device("cpu"))
    torch.set_num_threads(defaults.threads)
    rates = {}
    for clients in args.clients:
        finished = threading.Semaphore(0)  # released once per completion that ends

        def sink(events, finished=finished) -> None:
            for _ in range(sum(1 for event in events if event[2] is not None)):
                finished.release()

        if defaults.workers == 1:
            engine = Engine(model, tokenizer, sink, max_batch=16).start()
        else:
            engine = EnginePool(model, tokenizer, sink, 16, 64, "window", defaults.workers, defaults.threads).start()

        def run(batch: list[Completion], engine=engine, finished=finished) -> None:
            engine.submit(batch)
            for _ in batch:
                if not finished.acquire(timeout=600):
                    raise SystemExit("the engine finished nothing for 10 minutes")

        try:
            run([Completion(Request(tuple(tokenizer.encode("\n")), 50, 0, Sampling(0.8)))])  # warm-up
            started = time.perf_counter()
            for r in range(args.requests):  # a client's requests follow one another: rounds of `clients` at once
                run([Completion(Request(tuple(tokenizer.encode("\n")), args.tokens, r * clients + i, Sampling(0.8)))
                     for i in range(clients)])  # fmt: skip
            rates[clients] = clients * args.requests * args.tokens / (time.perf_counter() - started)
        finally:
            engine.close()
    return rates, f"{defaults.workers} worker process(es) of {defaults.threads} thread(s), as src.serve"


def soak(args) -> None:
    server = Server(args.ckpt_path)
    print(f"\nsoak: 16 clients for {args.soak} s, 10% of requests leaving mid-stream, {args.tokens} characters each")
    memory: list[tuple[float, float]] = []

    async def run() -> dict:
        async def watch() -> None:
            started = time.perf_counter()
            while True:
                await asyncio.sleep(10)
                rss = (await metrics(server.port)).get("process_resident_memory_bytes", float("nan")) / 2**20
                memory.append((time.perf_counter() - started, rss))
                print(f"  {memory[-1][0]:5.0f} s  resident {rss:7.1f} MiB", flush=True)

        watcher = asyncio.ensure_future(watch())
        record = await load(server.port, 16, 10**6, args.tokens, args.soak, leave=0.1)
        watcher.cancel()
        await asyncio.sleep(0.5)
        record["end"] = await metrics(server.port)
        return record

    try:
        r = asyncio.run(run())
    finally:
        server.close()
    done = len(r["ttft"])
    rate = r["tokens"] / r["wall"]
    print(f"completed {done}, left mid-stream {r['left']}, failed {r['errors']}, {rate:,.0f} tokens/s")
    after = [m for t, m in memory if t > 60]
    if after:
        spread = (max(after) - min(after)) / min(after) * 100
        low, high = min(after), max(after)
        print(f"resident memory after the first minute: {low:.1f} to {high:.1f} MiB ({spread:.1f}% spread)")
    end = r["end"]
    print(f"at the end: {end.get('chargpt_completions_active', float('nan')):.0f} active, "
          f"{end.get('chargpt_completions_queued', float('nan')):.0f} queued")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", default="lightning_logs/shakespeare_char/checkpoints/last.ckpt")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=6, help="completions per client, in turn (fewer: noisier)")
    parser.add_argument("--tokens", type=int, default=500, help="characters per completion")
    parser.add_argument("--seconds", type=float, default=60, help="stop sending new requests after this")
    parser.add_argument("--soak", type=float, default=0, help="then 16 clients for this many seconds (0: skip)")
    parser.add_argument("--no_baseline", action="store_true", help="skip the run with batching off")
    parser.add_argument("--logprobs", type=int, default=None, help="also a run whose requests ask for these logprobs")
    args = parser.parse_args()
    if not Path(args.ckpt_path).exists():
        raise SystemExit(f"no checkpoint at {args.ckpt_path}: train one (README, Quick start) or pass --ckpt_path")
    print(f"{args.tokens}-character streamed completions, temperature 0.8, the server's default cache mode (window)")
    print(f"{'server':<10} {'clients':>7} {'tokens/s':>12} {'per client':>12} {'ttft p50':>9} {'ttft p95':>9} "
          f"{'errors':>6} {'requests':>8} {'server cpu':>10} {'client cpu':>10}")  # fmt: skip
    batched = sweep(args, "batched", [])
    if args.logprobs is not None:
        with_logprobs = sweep(args, f"logprobs {args.logprobs}", [], args.logprobs)
        for c in batched:
            print(f"{c:>2} clients: logprobs {args.logprobs} cost {1 - with_logprobs[c] / batched[c]:.1%} of tokens/s")
    ceiling, what = engine_alone(args)
    print(f"engine alone: {what}")
    for c in batched:
        rows, clients = ceiling[c] / ceiling[min(ceiling)], batched[c] / batched[min(batched)]
        print(
            f"{c:>2} clients: engine alone (no HTTP) {ceiling[c]:,.0f} tokens/s ({rows:.1f}x one row), the server "
            f"{batched[c]:,.0f} ({clients:.1f}x one client), {batched[c] / ceiling[c]:.0%} of the engine's"
        )
    if not args.no_baseline:
        single = sweep(args, "one-by-one", ["--max_batch", "1", "--max_queue", "64"])
        alone = batched[min(batched)]
        for c in batched:
            print(f"{c:>2} clients: batched {batched[c] / alone:.1f}x one client alone, "
                  f"{batched[c] / single[c]:.1f}x the server with batching off")  # fmt: skip
    if args.soak:
        soak(args)


if __name__ == "__main__":
    main()
