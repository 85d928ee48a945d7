"""OpenAI's completions API as chargpt serves it: the request's fields and checks, and the response, chunk and error
shapes that the official ``openai`` client reads (https://platform.openai.com/docs/api-reference/completions).

A character model fits the completions API (prompt in, text out) rather than chat. Counts in ``usage`` are tokens:
characters for the default tokenizer, bytes for ``bytes``. Fields OpenAI has and chargpt cannot honour are refused
by name when set (``logprobs``, ``suffix``, penalties, ``logit_bias``, ``best_of`` above ``n``), never ignored.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr

from src.generation.sampling import check_sampling_args

Number = StrictFloat | StrictInt  # JSON numbers: 1 and 1.0 alike, but never the string "1"


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently the default

    model: StrictStr | None = None  # any name is accepted: the server holds one model (as llama-server does)
    prompt: StrictStr | list[StrictStr] = ""
    max_tokens: StrictInt = 16  # OpenAI's default
    temperature: Number = 1.0
    top_p: Number | None = None
    top_k: StrictInt | None = None  # chargpt's own (the openai client sends it through extra_body)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    echo: StrictBool = False
    user: StrictStr | None = None
    # OpenAI's fields that a character model has no use for: refused when set (``unsupported``)
    logprobs: StrictInt | None = None
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None
    presence_penalty: Number = 0
    frequency_penalty: Number = 0
    logit_bias: dict[str, Any] | None = None


class RequestError(Exception):
    """A request the server refuses: the HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def check(request: CompletionRequest, max_tokens_cap: int) -> None:
    """Refuse values the types allow but chargpt cannot serve, one problem at a time, naming its field."""
    problems = [
        ("logprobs", request.logprobs is not None, "logprobs are not supported by chargpt"),
        ("suffix", request.suffix is not None, "suffix (insertion) is not supported by chargpt"),
        ("best_of", request.best_of not in (None, 1, request.n), "best_of is not supported by chargpt: use n"),
        ("presence_penalty", request.presence_penalty != 0, "presence_penalty is not supported by chargpt"),
        ("frequency_penalty", request.frequency_penalty != 0, "frequency_penalty is not supported by chargpt"),
        ("logit_bias", bool(request.logit_bias), "logit_bias is not supported by chargpt"),
        ("max_tokens", not 1 <= request.max_tokens <= max_tokens_cap,
         f"max_tokens must be between 1 and {max_tokens_cap} (this server's --max_tokens_cap), "
         f"got {request.max_tokens}"),
        ("n", not 1 <= request.n <= 16, f"n must be between 1 and 16, got {request.n}"),
        ("stop", isinstance(request.stop, list) and len(request.stop) > 4,
         "stop takes at most 4 texts"),
        ("prompt", isinstance(request.prompt, list) and not 1 <= len(request.prompt) <= 16,
         "prompt must be a text or a list of 1 to 16 texts"),
    ]  # fmt: skip
    for param, bad, message in problems:
        if bad:
            raise RequestError(400, message, param)
    for param, value in (("temperature", request.temperature), ("top_k", request.top_k), ("top_p", request.top_p)):
        try:
            check_sampling_args(**{param: value})
        except ValueError as err:
            raise RequestError(400, str(err).removeprefix("invalid sampling options: "), param) from None


def prompts(request: CompletionRequest) -> list[str]:
    return [request.prompt] if isinstance(request.prompt, str) else request.prompt


def stops(request: CompletionRequest) -> list[str]:
    return [request.stop] if isinstance(request.stop, str) else list(request.stop or [])


def seeds(request: CompletionRequest, count: int) -> list[int]:
    """Choice i of a request seeded s draws with seed s + i, as ``src.generate --seed s --num_samples n`` does;
    without a seed, each request gets a fresh random one."""
    base = request.seed if request.seed is not None else secrets.randbits(62)
    return [base + i % request.n for i in range(count)]


def completion_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


def body(cid: str, model: str, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
    """A whole response, or a stream's chunk (the same shape, holding the text since the last chunk)."""
    out = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def error(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def validation_error(errors: list[dict[str, Any]]) -> RequestError:
    """Pydantic's first complaint about a request body, in words a client can act on."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return RequestError(400, f"the body is not valid JSON: {first.get('msg')}", None)
    if first.get("type") == "extra_forbidden":
        return RequestError(400, f"unknown field {param!r} (chargpt's fields: {', '.join(FIELDS)})", param)
    if first.get("type") == "model_attributes_type" or not loc:
        return RequestError(400, "the body must be a JSON object of completion options", None)
    return RequestError(400, f"{param}: {first.get('msg')} (got {first.get('input')!r})"[:500], param)


FIELDS = tuple(CompletionRequest.model_fields)
