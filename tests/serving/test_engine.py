"""Continuous batching: completions decoded together, joining and leaving between steps, each one the text it would
be alone (``src.generation.decoding.generate_tokens`` with its seed and options), whether one engine decodes them in
this process or a pool of worker processes (``src.serving.workers``) shares them out."""

import threading

import pytest
import torch

from src.data.tokenizer import CharTokenizer
from src.generation.decoding import generate_tokens
from src.serving.engine import Completion, Engine, QueueFull, Request, Sampling
from src.serving.workers import EnginePool
from tests.helpers import tiny_gpt

TOKENIZER = CharTokenizer("\nabcdefghij")  # 11 tokens, tiny_gpt's vocabulary size
CASES = [  # prompt ids, new tokens, seed, sampling: windows of 16 tokens, so every case refills its window
    ([1, 2, 3], 40, 1, Sampling(0.8)),
    ([0], 25, 2, Sampling(1.0, top_k=3)),
    ([4, 5, 6, 7, 8, 9, 10, 1, 2, 3, 4, 5, 6, 7], 30, 3, Sampling(0.0)),
    ([2, 2], 45, 4, Sampling(0.9, top_p=0.8)),
    ([3], 20, 1, Sampling(0.8)),  # the same options as the first: one draw serves both rows
]


def alone(model, ids, new_tokens, seed, sampling, cache):
    generator = [torch.Generator().manual_seed(seed)]
    options = dict(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, cache=cache)
    tokens = generate_tokens(model, torch.tensor([ids]), new_tokens, generator=generator, **options)
    return TOKENIZER.decode([t.item() for t in tokens])


class Collect:
    """A sink that gathers each completion's text and says when all are done."""

    def __init__(self, expected: int) -> None:
        self.texts, self.reasons, self.left, self.done = {}, {}, expected, threading.Event()
        self.scores: dict = {}

    def __call__(self, events) -> None:
        for completion, text, finish_reason, scores in events:
            self.texts[completion.tag] = self.texts.get(completion.tag, "") + text
            self.scores.setdefault(completion.tag, []).extend(scores)
            if finish_reason is not None:
                self.reasons[completion.tag] = finish_reason
                self.left -= 1
        if self.left <= 0:
            self.done.set()


def start(model, sink, kind: str = "thread", **options) -> Engine | EnginePool:
    """An engine in this process ("thread"), or two worker processes ("processes") with the slots between them."""
    if kind == "thread":
        return Engine(model, TOKENIZER, sink, **options).start()
    return EnginePool(model, TOKENIZER, sink, workers=2, **options).start()


KINDS = ["thread", "processes"]


def new_completion(ids, max_tokens: int, seed: int, sampling=Sampling(), stops=(), tag=None, **options) -> Completion:
    return Completion(Request(tuple(ids), max_tokens, seed, sampling, tuple(stops), **options), tag)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cache", ["window", "exact"])
def test_each_completion_is_what_it_would_be_alone_whoever_joins_or_leaves(cache, kind):
    model = tiny_gpt()
    expected = [alone(model, *case, cache) for case in CASES]
    sink = Collect(len(CASES))
    engine = start(model, sink, kind, max_batch=3, cache=cache)  # fewer slots than completions: some wait
    try:
        completions = [new_completion(ids, n, seed, s, tag=i) for i, (ids, n, seed, s) in enumerate(CASES)]
        engine.submit(completions[:2])
        engine.submit(completions[2:])
        assert sink.done.wait(60)
    finally:
        engine.close()
    assert [sink.texts[i] for i in range(len(CASES))] == expected
    assert set(sink.reasons.values()) == {"length"}
    assert engine.counts() == (0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_completions_that_prefill_in_the_same_round_fill_their_rows_together_and_decode_as_alone(kind):
    # three in step (joins of one token, then every window refill of 8 at the same round, in one call), and one
    # out of step, whose row has to make way when the others gather in the last slots
    cases = [([1], 60, 1, Sampling(0.8)), ([2], 60, 2, Sampling(0.8)), ([3], 60, 3, Sampling(0.0))]
    cases = [([4, 5, 6, 7, 8], 50, 4, Sampling(1.0, top_k=3))] + cases
    model = tiny_gpt()
    expected = [alone(model, *case, "window") for case in cases]
    sink = Collect(len(cases))
    engine = start(model, sink, kind, max_batch=4)
    try:
        engine.submit([new_completion(ids, n, seed, s, tag=i) for i, (ids, n, seed, s) in enumerate(cases)])
        assert sink.done.wait(60)
    finally:
        engine.close()
    assert [sink.texts[i] for i in range(len(cases))] == expected


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_completion_frees_its_slot_and_the_others_go_on_unchanged(kind):
    model = tiny_gpt()
    expected = alone(model, [1, 2, 3], 200, 5, Sampling(0.8), "window")
    seen = threading.Event()

    def sink(events):
        for completion, text, *_ in events:
            texts[completion.tag] = texts.get(completion.tag, "") + text
            if completion.tag == "leaves" and completion.produced >= 10:
                seen.set()

    texts = {}
    engine = start(model, sink, kind, max_batch=2)
    try:
        leaves = new_completion([4], 10_000, 1, Sampling(1.0), tag="leaves")  # the first slot: the other row moves
        stays = new_completion([1, 2, 3], 200, 5, Sampling(0.8), tag="stays")
        engine.submit([leaves, stays])
        assert seen.wait(30)
        waiting = new_completion([2], 5, 9, Sampling(0.0), tag="waiting")
        engine.submit([waiting])  # both slots are taken: it waits
        engine.cancel(waiting)  # cancelled before it had a slot: it leaves the queue at once
        engine.cancel(leaves)
        while stays.finish_reason is None:
            threading.Event().wait(0.01)
    finally:
        engine.close()
    assert texts["stays"] == expected
    assert leaves.finish_reason is None and leaves.produced < 10_000
    assert "waiting" not in texts
    assert engine.counts() == (0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_stop_texts_end_a_completion_where_the_first_one_appears(kind):
    model = tiny_gpt()
    full = alone(model, [1], 60, 3, Sampling(1.0), "window")
    stops = [full[20:23], full[30:32]]  # two stop texts: the earlier appearance wins
    first = min(full.index(s) for s in stops)
    sink = Collect(1)
    engine = start(model, sink, kind)
    try:
        engine.submit([new_completion([1], 60, 3, Sampling(1.0), stops, tag=0)])
        assert sink.done.wait(30)
    finally:
        engine.close()
    assert sink.texts[0] == full[:first]
    assert sink.reasons[0] == "stop"


def test_a_full_queue_refuses_new_work():
    blocked = threading.Event()
    engine = start(tiny_gpt(), lambda events: blocked.wait(30), max_batch=1, max_queue=1)
    held = [new_completion([1], 10_000, 1), new_completion([1], 5, 2)]
    try:
        engine.submit(held[:1])  # takes the slot (its sink holds the engine)
        engine.submit(held[1:])  # waits
        with pytest.raises(QueueFull):
            engine.submit([new_completion([1], 5, 3)])
    finally:
        blocked.set()
        for completion in held:
            engine.cancel(completion)
        engine.close()


def test_a_step_that_fails_ends_every_completion_with_an_error_and_the_engine_goes_on(monkeypatch):
    model = tiny_gpt()
    sink = Collect(2)
    engine = start(model, sink, max_batch=2)
    try:
        monkeypatch.setattr(model, "next_logits", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
        engine.submit([new_completion([1], 5, 1, tag=0), new_completion([2], 5, 2, tag=1)])
        assert sink.done.wait(30)
        assert sink.reasons == {0: "error", 1: "error"} and "boom" in sink.texts[0]
        monkeypatch.undo()
        after = Collect(1)
        engine.sink = after
        engine.submit([new_completion([1], 5, 1, tag=2)])
        assert after.done.wait(30) and after.reasons == {2: "length"}
    finally:
        engine.close()


def test_a_model_without_a_kv_cache_is_refused_by_name():
    from src.data.tokenizer import CharTokenizer
    from src.errors import UserError
    from src.model import build_model

    model = build_model("lecture_heads", vocab_size=11, block_size=8, n_embd=16, n_head=4, n_layer=1)
    for kind in (Engine, EnginePool):
        with pytest.raises(UserError, match="has no KV cache, which continuous batching needs: sample it with"):
            kind(model, CharTokenizer("abcdefghijk"), lambda events: None)


def run(model, completions: list[Completion], kind: str = "thread", **options) -> Collect:
    sink = Collect(len(completions))
    engine = start(model, sink, kind, **options)
    try:
        engine.submit(completions)
        assert sink.done.wait(30)
    finally:
        engine.close()
    return sink


def forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), dim=-1)  # (T, V)


def assert_scores(scores, ids: list[int], logprobs: torch.Tensor, alternatives: int, first: int) -> None:
    """``scores[i]`` scores ``ids[first + i]``: the log-softmax at the position before it, the most likely tokens and
    the token itself among the alternatives; the first token of all has nothing before it (None)."""
    assert [s.token for s in scores] == ids[first : first + len(scores)]
    for i, score in enumerate(scores):
        if first + i == 0:
            assert score.logprob is None and score.top is None
            continue
        row = logprobs[first + i - 1]
        torch.testing.assert_close(score.logprob, row[ids[first + i]].item(), rtol=0, atol=1e-5)
        assert [t for t, _ in score.top][:alternatives] == row.topk(alternatives).indices.tolist()
        assert ids[first + i] in [t for t, _ in score.top]


@pytest.mark.parametrize("kind", KINDS)
def test_logprobs_of_generated_tokens_are_the_models_log_softmax_whatever_the_temperature(kind):
    model = tiny_gpt()
    prompt = [1, 2, 3]
    sink = run(model, [new_completion(prompt, 12, 7, Sampling(0.7, top_k=4), logprobs=3, tag=0)], kind)
    generated = TOKENIZER.encode(sink.texts[0])
    assert len(generated) == 12 and len(sink.scores[0]) == 12  # prompt + 12 tokens fit the 16-token window
    ids = prompt + generated
    assert_scores(sink.scores[0], ids, forward_logprobs(model, ids), 3, first=len(prompt))
    assert "".join(s.text for s in sink.scores[0]) == sink.texts[0]


def test_a_prompt_is_scored_in_one_pass_and_max_tokens_0_generates_nothing():
    model = tiny_gpt()
    prompts = [[4, 5, 6, 7, 8], [1, 9, 2]]
    sink = run(model, [new_completion(p, 0, 1, logprobs=2, score_prompt=True, tag=i) for i, p in enumerate(prompts)])
    for i, prompt in enumerate(prompts):
        scores = sink.scores[i]
        assert sink.texts[i] == "" and sink.reasons[i] == "length"
        assert scores[0].logprob is None and scores[0].top is None and len(scores) == len(prompt)
        assert_scores(scores, prompt, forward_logprobs(model, prompt), 2, first=0)


def test_a_completion_without_logprobs_gets_no_scores():
    sink = run(tiny_gpt(), [new_completion([1, 2], 5, 1, tag=0)])
    assert sink.scores[0] == [] and len(sink.texts[0]) == 5
