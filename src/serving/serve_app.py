"""The HTTP side of ``src.serve``: routes, the API key, the body limit and OpenAI's error shape for every refusal."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from src.errors import UserError
from src.serving import completions as api
from src.serving.completions import RequestError
from src.serving.service import MAX_BODY, PLAYGROUND, Job, Server


def create_app(server: Server) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        server.loop = asyncio.get_running_loop()
        server.engine.start()
        yield
        server.engine.close()

    app = FastAPI(title="chargpt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=MAX_BODY)

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> JSONResponse:
        if request.url.path == "/v1/completions":
            server.requests.labels(str(err.status)).inc()
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse(api.error(err.message, err.kind, err.param), err.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(api.error(f"{request.method} {request.url.path}: {err.detail}"), err.status_code)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(api.error(f"internal error: {type(err).__name__}: {err}", "server_error"), 500)

    def authorize(request: Request) -> None:
        if server.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {server.api_key}".encode()):
            raise RequestError(401, "a valid API key is required: send 'Authorization: Bearer KEY'", None)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        config = server.model.config
        about = {
            "block_size": config.block_size,
            "vocab_size": config.vocab_size,
            "max_tokens": server.args.max_tokens_cap,
        }
        entry = {"id": server.name, "object": "model", "created": 0, "owned_by": "chargpt",
                 "max_model_len": config.block_size, "chargpt": about}  # fmt: skip
        return {"object": "list", "data": [entry]}

    # the tokenizer, at the server's root in vLLM's shapes, where lm-evaluation-harness's local-completions finds it
    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        authorize(request)
        options = parse(api.TokenizeRequest, await request.body())
        try:
            tokens = server.tokenizer.encode(options.prompt)
        except UserError as err:
            raise RequestError(400, f"prompt has {err}", "prompt") from None
        strings = [api.token_string(server.tokenizer, t) for t in tokens] if options.return_token_strs else None
        return {"count": len(tokens), "max_model_len": server.model.config.block_size, "tokens": tokens,
                "token_strs": strings}  # fmt: skip

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        authorize(request)
        options = parse(api.DetokenizeRequest, await request.body())
        try:
            return {"prompt": server.tokenizer.decode(options.tokens)}
        except UserError as err:
            raise RequestError(400, f"tokens has {err}", "tokens") from None

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request) -> dict:
        authorize(request)
        return api.tokenizer_info(server.tokenizer, server.model.config.block_size)

    @app.post("/v1/completions")
    async def complete(request: Request) -> Response:
        authorize(request)
        options = parse(api.CompletionRequest, await request.body())
        job = server.submit(options, server.args.max_tokens_cap)
        if options.echo:
            for j, echo in enumerate(job.echoes):
                job.queue.put_nowait((j, echo, None, []))
        cid = api.completion_id()
        server.requests.labels("200").inc()
        if options.stream:
            usage = bool((options.stream_options or {}).get("include_usage"))
            return StreamingResponse(stream(server, job, cid, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        return await whole(server, job, cid, request)

    return app


def parse(kind: type[BaseModel], body: bytes):
    """A request body as ``kind``, or a 400 naming what is wrong with it."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        raise api.validation_error(err.errors(), tuple(kind.model_fields)) from None


async def stream(server: Server, job: Job, cid: str, include_usage: bool):
    """Server-sent events: one chunk per choice for what arrived since the last one, at most one write per
    ``--stream_interval`` (fewer, larger writes cost clients and server less CPU: docs/serving.md), then
    ``[DONE]``. However it ends (a client gone included), the completions still decoding are cancelled: their slots
    free at the next step."""
    interval, sent = server.args.stream_interval, 0.0
    try:
        while job.open:
            items = [await job.queue.get()]
            wait = sent + interval - time.perf_counter()
            if wait > 0 and sent:  # the first text goes at once; later text gathers for a write each interval
                await asyncio.sleep(wait)
            sent = time.perf_counter()
            while not job.queue.empty():
                items.append(job.queue.get_nowait())
            merged: dict[int, list] = {}
            for index, text, finish_reason, scores in items:
                entry = merged.setdefault(index, ["", None, []])
                entry[0] += text
                entry[1] = finish_reason
                if (part := job.scored(index, text, scores, finish_reason is not None)) is not None:
                    entry[2].append(part)
            out = []
            for index, (text, finish_reason, scored) in merged.items():
                if finish_reason is not None:
                    job.open -= 1
                if finish_reason == "error":
                    out.append(api.error(f"decoding failed: {text}", "server_error"))
                    continue
                shown = api.Logprobs.join(scored) if scored else None
                out.append(api.body(cid, server.name, [api.choice(index, text, finish_reason, shown)]))
            yield b"".join(map(sse, out))
        if include_usage:
            tokens = sum(c.produced for c in job.completions)
            yield sse(api.body(cid, server.name, [], api.usage(job.prompt_tokens, tokens)))
        yield b"data: [DONE]\n\n"
    finally:
        server.cancel(job)


async def whole(server: Server, job: Job, cid: str, request: Request) -> Response:
    """The finished completions in one response; a client that leaves first cancels them."""
    texts, reasons = [""] * len(job.completions), [None] * len(job.completions)
    scored: list[list[dict]] = [[] for _ in job.completions]

    async def collect() -> None:
        while job.open:
            index, text, finish_reason, scores = await job.queue.get()
            texts[index] += text
            if (part := job.scored(index, text, scores, finish_reason is not None)) is not None:
                scored[index].append(part)
            if finish_reason is not None:
                reasons[index] = finish_reason
                job.open -= 1

    collecting, leaving = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({collecting, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        if not collecting.done():
            collecting.cancel()
            server.cancel(job)
    if not collecting.done() or collecting.cancelled():
        return Response(status_code=499)
    if "error" in reasons:
        raise RequestError(500, f"decoding failed: {texts[reasons.index('error')]}", None, "server_error")
    choices = [
        api.choice(i, text, reason, api.Logprobs.join(scored[i]) if scored[i] else None)
        for i, (text, reason) in enumerate(zip(texts, reasons))
    ]
    tokens = sum(c.produced for c in job.completions)
    return JSONResponse(api.body(cid, server.name, choices, api.usage(job.prompt_tokens, tokens)))


async def disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(data: dict) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413 (read to the end first, so the client sees the answer rather than
    a reset connection); smaller ones are handed on whole."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size <= self.limit:
                chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if size > self.limit:
            message = f"the body has {size:,} bytes, over this server's limit of {self.limit:,}"
            return await JSONResponse(api.error(message), 413)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)
