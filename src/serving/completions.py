"""OpenAI's completions API as chargpt serves it: the request's fields and checks, and the response, chunk and error
shapes that the official ``openai`` client reads (https://platform.openai.com/docs/api-reference/completions).

A character model fits the completions API (prompt in, text out) rather than chat. Counts in ``usage`` are tokens:
characters for the default tokenizer, bytes for ``bytes``. Prompts are texts or token ids (a list of ints, or a
list of such lists), as OpenAI's API and lm-evaluation-harness send them. ``logprobs`` (0 to 5) scores the
generated tokens, and with ``echo`` the prompt's too (``max_tokens`` 0 scores without generating): docs/serving.md.
Fields OpenAI has and chargpt cannot honour are refused by name when set (``suffix``, penalties, ``logit_bias``,
``best_of`` above ``n``), never ignored.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr

from src.data.tokenizer import ByteTokenizer, Tokenizer, prompt_ids
from src.generation.sampling import check_sampling_args
from src.serving.scoring import Score

Number = StrictFloat | StrictInt  # JSON numbers: 1 and 1.0 alike, but never the string "1"


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently the default

    model: StrictStr | None = None  # any name is accepted: the server holds one model (as llama-server does)
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] = ""
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
    logprobs: StrictInt | None = None
    # OpenAI's fields that a character model has no use for: refused when set (``check``)
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None
    presence_penalty: Number = 0
    frequency_penalty: Number = 0
    logit_bias: dict[str, Any] | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr
    model: StrictStr | None = None
    add_special_tokens: StrictBool = True  # accepted for vLLM's clients: a character tokenizer has no special tokens
    return_token_strs: StrictBool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[StrictInt]
    model: StrictStr | None = None


def tokenizer_info(tokenizer: Tokenizer, block_size: int) -> dict[str, Any]:
    """What ``GET /tokenizer_info`` says (vLLM's fields). A character tokenizer has no special tokens; the newline
    stands in for end-of-text, as in the lecture, whose generation starts from it (token 0 of its vocabulary); lm-eval
    then conditions a text's first character on a newline and stops generated text at the end of a line."""
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": tokenizer.vocab_size,
        "model_max_length": block_size,
        "eos_token": tokenizer.decode(prompt_ids(tokenizer, "")),  # a newline (or token 0 where there is none)
        "bos_token": None,
        "pad_token": None,
        "unk_token": None,
        "chat_template": None,
        "vocab": tokenizer.vocab,
    }


class RequestError(Exception):
    """A request the server refuses: the HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def check(request: CompletionRequest, max_tokens_cap: int) -> None:
    """Refuse values the types allow but chargpt cannot serve, one problem at a time, naming its field."""
    least = 0 if request.echo else 1
    problems = [
        ("logprobs", request.logprobs is not None and not 0 <= request.logprobs <= MAX_LOGPROBS,
         f"logprobs must be between 0 and {MAX_LOGPROBS} (alternatives per token), got {request.logprobs}"),
        ("suffix", request.suffix is not None, "suffix (insertion) is not supported by chargpt"),
        ("best_of", request.best_of not in (None, 1, request.n), "best_of is not supported by chargpt: use n"),
        ("presence_penalty", request.presence_penalty != 0, "presence_penalty is not supported by chargpt"),
        ("frequency_penalty", request.frequency_penalty != 0, "frequency_penalty is not supported by chargpt"),
        ("logit_bias", bool(request.logit_bias), "logit_bias is not supported by chargpt"),
        ("max_tokens", not least <= request.max_tokens <= max_tokens_cap,
         f"max_tokens must be between 1 (0 with echo, to score a prompt) and {max_tokens_cap} (this server's "
         f"--max_tokens_cap), got {request.max_tokens}"),
        ("n", not 1 <= request.n <= 16, f"n must be between 1 and 16, got {request.n}"),
        ("stop", isinstance(request.stop, list) and len(request.stop) > 4,
         "stop takes at most 4 texts"),
        ("prompt", isinstance(request.prompt, list) and not 1 <= len(prompts(request)) <= 16,
         "prompt must be a text, a list of 1 to 16 texts, a list of token ids or a list of 1 to 16 such lists"),
    ]  # fmt: skip
    for param, bad, message in problems:
        if bad:
            raise RequestError(400, message, param)
    for param, value in (("temperature", request.temperature), ("top_k", request.top_k), ("top_p", request.top_p)):
        try:
            check_sampling_args(**{param: value})
        except ValueError as err:
            raise RequestError(400, str(err).removeprefix("invalid sampling options: "), param) from None


MAX_LOGPROBS = 5  # OpenAI's own limit for the completions API


def prompts(request: CompletionRequest) -> list[str | list[int]]:
    """The request's prompts, each a text or a list of token ids."""
    prompt = request.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    return list(prompt)


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


def choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def token_string(tokenizer: Tokenizer, token: int) -> str:
    """A token as the logprobs fields name it: its character; for the bytes tokenizer, a byte that is not a whole
    character alone is ``bytes:\\xNN``, as OpenAI writes such tokens."""
    if token < 128 or not isinstance(tokenizer, ByteTokenizer):
        return tokenizer.vocab[token]
    return f"bytes:\\x{token:02x}"


class Logprobs:
    """One choice's ``logprobs`` object, built as its text arrives. A token's entry goes out with the text it
    completes: text held back (a possible stop sequence) holds its tokens back too, and the tokens of a stop
    sequence, which the text leaves out, are dropped. ``text_offset`` is each token's start in the choice's text."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.name = functools.partial(token_string, tokenizer)
        self.pending: deque[Score] = deque()
        self.text = self.offset = 0  # characters of the text so far, and of the tokens sent so far

    def add(self, text: str, scores: list[Score], finished: bool) -> dict[str, list]:
        self.text += len(text)
        self.pending.extend(scores)
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        while self.pending and self.offset + len(self.pending[0].text) <= self.text:
            score = self.pending.popleft()
            out["tokens"].append(self.name(score.token))
            out["token_logprobs"].append(score.logprob)
            out["top_logprobs"].append(None if score.top is None else {self.name(t): lp for t, lp in score.top})
            out["text_offset"].append(self.offset)
            self.offset += len(score.text)
        if finished:
            self.pending.clear()
        return out

    @staticmethod
    def join(parts: list[dict[str, list]]) -> dict[str, list]:
        return {key: [v for part in parts for v in part[key]] for key in parts[0]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def error(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def validation_error(errors: list[dict[str, Any]], fields: tuple[str, ...]) -> RequestError:
    """Pydantic's first complaint about a request body, in words a client can act on."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return RequestError(400, f"the body is not valid JSON: {first.get('msg')}", None)
    if first.get("type") == "extra_forbidden":
        return RequestError(400, f"unknown field {param!r} (chargpt's fields: {', '.join(fields)})", param)
    if first.get("type") == "model_attributes_type" or not loc:
        return RequestError(400, f"the body must be a JSON object of these fields: {', '.join(fields)}", None)
    return RequestError(400, f"{param}: {first.get('msg')} (got {first.get('input')!r})"[:500], param)
