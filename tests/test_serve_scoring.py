"""Scoring through the API: ``logprobs`` and ``echo`` in OpenAI's legacy completions shape, token-id prompts and the
tokenizer endpoints, checked through the official ``openai`` client against a direct forward pass of the model."""

import json

import openai
import pytest
import torch

from src.checkpoints.load import load_model
from tests.helpers import LiveServer

pytestmark = pytest.mark.slow
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(ckpt):
    live = LiveServer(ckpt, "--dtype", "float32", "--workers", "1")  # the engine in the server's process
    yield live
    live.close()


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(str(ckpt), torch.device("cpu"))


def log_softmax(model, text: str) -> tuple[list[int], torch.Tensor]:
    """The ids of ``text`` and the model's log-probabilities (T, V) after each of its positions."""
    net, tokenizer = model
    ids = tokenizer.encode(text)
    with torch.no_grad():
        return ids, torch.log_softmax(net(torch.tensor([ids]))[0][0].float(), dim=-1)


def assert_matches(logprobs, text: str, model, first: int, alternatives: int) -> None:
    """``logprobs`` (the response's object) scores ``text[first:]``, each token from the ones before it."""
    _, tokenizer = model
    ids, expected = log_softmax(model, text)
    assert "".join(logprobs.tokens) == text[first:]
    assert logprobs.text_offset == list(range(len(text) - first))
    for i, (token, value, top) in enumerate(zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs)):
        position = first + i
        if position == 0:
            assert value is None and top is None
            continue
        row = expected[position - 1]
        assert value == pytest.approx(row[ids[position]].item(), abs=1e-4)
        best = [tokenizer.vocab[t] for t in row.topk(alternatives).indices.tolist()]
        assert list(top)[:alternatives] == best and token in top
        assert top[token] == pytest.approx(value, abs=1e-6)


def test_logprobs_of_generated_text_are_the_models_own_whatever_the_temperature(server, model):
    reply = server.client().completions.create(model="g", prompt="All:", max_tokens=10, seed=3, temperature=0.7,
                                               logprobs=3, extra_body={"top_k": 5})  # fmt: skip
    text = reply.choices[0].text
    assert len(text) == 10
    assert_matches(reply.choices[0].logprobs, "All:" + text, model, first=4, alternatives=3)


def test_echo_with_max_tokens_0_scores_a_prompt_without_generating(server, model):
    prompt = "Before we speak."
    reply = server.client().completions.create(model="g", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    choice = reply.choices[0]
    assert choice.text == prompt and choice.finish_reason == "length" and reply.usage.completion_tokens == 0
    assert_matches(choice.logprobs, prompt, model, first=0, alternatives=1)


def test_echo_and_logprobs_score_the_prompt_then_the_generated_text(server, model):
    reply = server.client().completions.create(model="g", prompt="Speak,", max_tokens=6, echo=True, logprobs=2,
                                               temperature=0)  # fmt: skip
    text = reply.choices[0].text
    assert text.startswith("Speak,") and len(text) == 12
    assert_matches(reply.choices[0].logprobs, text, model, first=0, alternatives=2)


def test_a_stream_carries_each_chunks_logprobs(server):
    client = server.client()
    options = dict(model="g", prompt="All:", max_tokens=40, seed=8, logprobs=2, echo=True)
    whole = client.completions.create(**options).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(**options, stream=True) if c.choices]
    assert "".join(c.text for c in chunks) == whole.text
    for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        joined = [v for c in chunks if c.logprobs for v in getattr(c.logprobs, field)]
        assert joined == getattr(whole.logprobs, field), field


def test_logprobs_follow_the_text_when_a_stop_text_ends_it(server):
    client = server.client()
    full = client.completions.create(model="g", prompt="All:", max_tokens=60, seed=2).choices[0].text
    stop = full[25:27]
    options = dict(model="g", prompt="All:", max_tokens=60, seed=2, stop=stop, logprobs=0)
    choice = client.completions.create(**options).choices[0]
    assert choice.finish_reason == "stop"
    assert "".join(choice.logprobs.tokens) == choice.text == full[: full.index(stop)]


def test_token_id_prompts_are_their_texts(server, model):
    _, tokenizer = model
    client = server.client()
    ids = tokenizer.encode("Speak, speak.")
    by_text = client.completions.create(model="g", prompt="Speak, speak.", max_tokens=8, seed=4)
    by_ids = client.completions.create(model="g", prompt=ids, max_tokens=8, seed=4)
    assert by_ids.choices[0].text == by_text.choices[0].text
    several = client.completions.create(model="g", prompt=[ids, ids[:3]], max_tokens=0, echo=True, logprobs=0)
    assert [c.text for c in sorted(several.choices, key=lambda c: c.index)] == ["Speak, speak.", "Spe"]


def test_the_tokenizer_endpoints_in_vllms_shapes(server, model):
    _, tokenizer = model
    status, reply, _ = server.post(json.dumps({"prompt": "All:", "add_special_tokens": False}).encode(), JSON,
                                   "/tokenize")  # fmt: skip
    assert status == 200 and reply["tokens"] == tokenizer.encode("All:") and reply["count"] == 4
    assert reply["max_model_len"] == 16
    status, reply, _ = server.post(json.dumps({"tokens": tokenizer.encode("All:")}).encode(), JSON, "/detokenize")
    assert (status, reply) == (200, {"prompt": "All:"})
    status, text = server.get("/tokenizer_info")
    info = json.loads(text)
    assert status == 200 and info["eos_token"] == "\n" and info["bos_token"] is None
    assert info["model_max_length"] == 16 and info["vocab"] == tokenizer.vocab
    assert server.client().models.list().data[0].max_model_len == 16


BAD = {
    "logprobs above 5": ({"prompt": "All:", "logprobs": 6}, "logprobs", "between 0 and 5"),
    "token ids outside the vocabulary": ({"prompt": [1, 999, -2]}, "prompt", "[-2, 999]"),
    "an empty list of ids": ({"prompt": [[1, 2], []]}, "prompt[1]", "empty list of token ids"),
    "nothing to score": ({"prompt": "", "echo": True, "logprobs": 0, "max_tokens": 0}, "prompt", "nothing to score"),
    "max_tokens 0 without echo": ({"prompt": "All:", "max_tokens": 0}, "max_tokens", "0 with echo"),
    "a prompt longer than the context": ({"prompt": "All:" * 5, "echo": True, "logprobs": 1, "max_tokens": 0},
                                         "prompt", "at most the model's context of 16"),
    "unknown tokenize field": ({"prompt": "All:", "text": "x"}, None, "unknown field 'text'", "/tokenize"),
    "tokenize outside the vocabulary": ({"prompt": "caf\u00e9"}, "prompt", "outside the vocabulary", "/tokenize"),
    "detokenize outside the vocabulary": ({"tokens": [0, 500]}, "tokens", "[500]", "/detokenize"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_scoring_requests_get_their_4xx_and_the_server_goes_on(server, case):
    body, param, words, *path = BAD[case]
    status, reply, _ = server.post(json.dumps(body).encode(), JSON, *path)
    assert status == 400 and words in reply["error"]["message"], reply
    assert reply["error"]["param"] == (param or "text")
    again = server.client().completions.create(model="g", prompt="All:", max_tokens=3, logprobs=5)
    assert len(again.choices[0].logprobs.tokens) == 3


def test_the_openai_client_raises_for_a_prompt_too_long_to_score(server):
    with pytest.raises(openai.BadRequestError, match="max_length=17"):
        server.client().completions.create(model="g", prompt="All:" * 5, max_tokens=0, echo=True, logprobs=1)


def test_n_choices_each_carry_their_own_logprobs(server):
    reply = server.client().completions.create(model="g", prompt="All:", max_tokens=12, n=3, seed=6, logprobs=5)
    choices = sorted(reply.choices, key=lambda c: c.index)
    assert len(choices) == 3 and len({c.text for c in choices}) > 1
    for choice in choices:
        assert "".join(choice.logprobs.tokens) == choice.text
        assert all(1 <= len(top) <= 6 for top in choice.logprobs.top_logprobs)  # 5, and the drawn one if not among
