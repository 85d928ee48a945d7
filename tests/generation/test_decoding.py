"""The fast decoding path (src/decoding.py): compiled equals eager, a batch equals its samples drawn one by one,
bf16 weights leave the model alone, and the compile cache serves a second process."""

import json
import subprocess
import sys

import pytest
import torch

from src.generation.decoding import CACHE_MODES, generate
from src.model import BigramLanguageModel, GPTConfig
from tests.helpers import REPO, tiny_gpt

PROMPT = torch.tensor([[1, 2, 3]])


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_draw_is_torch_multinomials():
    """``src.generate`` output is unchanged for a seed: the static step draws what ``torch.multinomial`` drew."""
    model = tiny_gpt()
    ours = generate(model, PROMPT, 40, top_k=5, generator=seeded(4))
    seq = PROMPT
    g = seeded(4)
    with torch.no_grad():
        for _ in range(40):
            logits, _ = model(seq[:, -16:])
            logits = logits[:, -1]
            kth = torch.topk(logits, 5).values[:, -1:]
            probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
            seq = torch.cat([seq, torch.multinomial(probs, 1, generator=g)], dim=1)
    assert torch.equal(ours, seq)


def test_a_batch_draws_what_each_sample_draws_alone():
    model = tiny_gpt()
    batch = generate(model, PROMPT.expand(3, -1), 40, generator=[seeded(7 + i) for i in range(3)])
    alone = [generate(model, PROMPT, 40, generator=seeded(7 + i)) for i in range(3)]
    assert torch.equal(batch, torch.cat(alone))
    assert len({tuple(row.tolist()) for row in batch}) == 3


def test_bf16_decoding_works_on_a_copy():
    model = tiny_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    greedy = generate(model, PROMPT, 40, temperature=0, dtype=torch.bfloat16)
    assert greedy.shape == (1, 43) and greedy.max() < 11
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in model.state_dict().items())


CHILD = """
import json, sys, torch
from torch._dynamo.utils import counters
from src.generation.decoding import generate
from tests.helpers import REPO, tiny_gpt
torch.manual_seed(0)
model = tiny_gpt()
same = []
for prompt in (torch.tensor([[1, 2, 3]]), torch.tensor([[1]])):
    runs = [generate(model, prompt, 40, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(1), **options)
            for options in ({"compile": True}, {}, {"cache": "none"})]
    same.append(torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2]))
print(json.dumps({"same": same, "hits": counters["inductor"]["fxgraph_cache_hit"]}))
"""


@pytest.mark.slow
def test_compiled_equals_eager_and_a_second_process_compiles_from_the_cache():
    """A 3-token prompt fills the cache through the padded window, a 1-token prompt through the one-token step;
    compiled, each gives the eager and the uncached tokens (every filter and the draw: greedy decoding is argmax of
    the same logits). A second process finds both graphs in Inductor's on-disk cache instead of generating their
    code again. Both run in fresh processes using Inductor's default cache folder: a process caches the folder it
    first saw, so a folder set here could be ignored; and on a cold cache, graphs a process writes after other tests
    ran in it were not the ones a fresh process looks up (seen on a cold /tmp/torchinductor_root; Inductor's cause)."""
    for _ in range(2):  # the first compiles (or finds an earlier run's graphs), the second finds both on disk
        done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        child = json.loads(done.stdout.strip().splitlines()[-1])
        assert child["same"] == [True, True]
    assert child["hits"] >= 2  # the step and the window graphs, from disk


def test_a_model_compiled_in_place_still_decodes_eagerly():
    """Training with --model.compile compiles the model in place; sampling from it must not compile (a graph per
    length) unless asked."""
    from torch._dynamo.utils import counters

    model = tiny_gpt()
    expected = {c: generate(model, PROMPT, 30, generator=seeded(2), cache=c) for c in ("exact", "none")}
    model.compile()
    before = counters["stats"]["unique_graphs"]
    for cache, tokens in expected.items():
        assert torch.equal(generate(model, PROMPT, 30, generator=seeded(2), cache=cache), tokens)
    assert counters["stats"]["unique_graphs"] == before


@pytest.mark.parametrize("length", [10, 40])  # inside the 16-token window, and well beyond it
def test_greedy_cached_equals_uncached_token_for_token(length):
    torch.manual_seed(3)
    model = tiny_gpt()
    prompt = torch.randint(0, 11, (2, 3))
    exact = generate(model, prompt, length, temperature=0, cache="exact")
    reference = generate(model, prompt, length, temperature=0, cache="none")
    assert torch.equal(exact, reference)


def test_sampled_cached_equals_uncached_with_the_same_generator():
    model = tiny_gpt()
    prompt = torch.randint(0, 11, (2, 3))
    runs = [
        generate(model, prompt, 30, top_k=5, generator=torch.Generator().manual_seed(9), cache=cache)
        for cache in ("exact", "none")
    ]
    assert torch.equal(*runs)


def test_window_mode_is_exact_inside_the_window_and_keeps_going_beyond():
    model = tiny_gpt()
    prompt = torch.randint(0, 11, (1, 2))
    window = generate(model, prompt, 40, temperature=0, cache="window")
    exact = generate(model, prompt, 40, temperature=0, cache="exact")
    assert window.shape == (1, 42)
    assert torch.equal(window[:, :16], exact[:, :16])


def test_prompts_empty_and_too_long():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="an empty prompt"):  # one rule for it: src.data.tokenizer.prompt_ids
        generate(model, torch.zeros(1, 0, dtype=torch.long), 5, temperature=0)
    long_prompt = torch.randint(0, 11, (1, 30))
    new_from_long = generate(model, long_prompt, 5, temperature=0)[:, 30:]
    new_from_cropped = generate(model, long_prompt[:, -16:], 5, temperature=0)[:, 16:]
    assert torch.equal(new_from_long, new_from_cropped)


@pytest.mark.parametrize("cache", CACHE_MODES)
def test_generation_turns_dropout_off_restores_the_mode_and_leaves_the_global_rng_alone(cache):
    """A model in training mode (the sampling callback's) samples as in eval mode: no dropout mask is drawn, so
    the global RNG that training's masks come from is untouched, and the model is left training."""
    model = tiny_gpt(dropout=0.5).train()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    state = torch.get_rng_state()
    in_training = generate(model, prompt, 24, generator=torch.Generator().manual_seed(0), cache=cache)
    assert model.training and torch.equal(state, torch.get_rng_state())
    in_eval = generate(model.eval(), prompt, 24, generator=torch.Generator().manual_seed(0), cache=cache)
    assert torch.equal(in_training, in_eval)


def test_bigram_generates_in_every_cache_mode():
    model = BigramLanguageModel(GPTConfig(vocab_size=11, block_size=8))
    idx = torch.randint(0, 11, (2, 8))
    out = generate(model, idx[:, :2], 20, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 22)
    greedy = [generate(model, idx[:, :2], 12, temperature=0, cache=c) for c in ("exact", "window", "none")]
    assert torch.equal(greedy[0], greedy[2]) and torch.equal(greedy[1], greedy[2])
