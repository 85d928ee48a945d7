"""The lecture's staged models against the lecture's own code: the classes below are the seed notebook's
(shared/seeds/003_*, with its typos mended), and every stage of src.model.lecture has their parameters and, with
their weights, computes their logits."""

import re

import pytest
import torch
import torch.nn as nn
import yaml
from torch.nn import functional as F

from src.model import GPTConfig, build_model
from tests.helpers import REPO

VOCAB, N_EMBD, BLOCK = 65, 32, 8


# --- the notebook's code -----------------------------------------------------------------------------------------
class Head(nn.Module):
    def __init__(self, head_size):
        super().__init__()
        self.key = nn.Linear(N_EMBD, head_size, bias=False)
        self.query = nn.Linear(N_EMBD, head_size, bias=False)
        self.value = nn.Linear(N_EMBD, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(BLOCK, BLOCK)))

    def forward(self, x):
        B, T, C = x.shape
        k = self.key(x)
        q = self.query(x)
        wei = q @ k.transpose(-2, -1) * C**-0.5
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = F.softmax(wei, dim=-1)
        v = self.value(x)
        return wei @ v


class MultiHeadAttention(nn.Module):
    def __init__(self, num_heads, head_size, proj):
        super().__init__()
        self.heads = nn.ModuleList([Head(head_size) for _ in range(num_heads)])
        self.proj = nn.Linear(N_EMBD, N_EMBD) if proj else None

    def forward(self, x):
        out = torch.cat([h(x) for h in self.heads], dim=-1)
        return out if self.proj is None else self.proj(out)


class FeedForward(nn.Module):
    def __init__(self, n_embd, widen=1, proj=False):
        super().__init__()
        layers = [nn.Linear(n_embd, widen * n_embd), nn.ReLU()]
        self.net = nn.Sequential(*layers, *([nn.Linear(widen * n_embd, n_embd)] if proj else []))

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    def __init__(self, n_embd, n_head, residual, widen, layernorm):
        super().__init__()
        head_size = n_embd // n_head
        self.sa = MultiHeadAttention(n_head, head_size, proj=residual)
        self.ffwd = FeedForward(n_embd, widen, proj=residual)
        self.residual = residual
        self.ln1 = nn.LayerNorm(n_embd) if layernorm else nn.Identity()
        self.ln2 = nn.LayerNorm(n_embd) if layernorm else nn.Identity()

    def forward(self, x):
        if not self.residual:
            return self.ffwd(self.sa(x))
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class NotebookModel(nn.Module):
    """The notebook's ``BigramLanguageModel`` as it grows, one keyword per step."""

    def __init__(self, n_head=0, ffwd=False, blocks=False, residual=False, widen=1, layernorm=False):
        super().__init__()
        self.token_embedding_table = nn.Embedding(VOCAB, N_EMBD)
        self.position_embedding_table = nn.Embedding(BLOCK, N_EMBD)
        if blocks:
            self.blocks = nn.Sequential(*[Block(N_EMBD, 4, residual, widen, layernorm) for _ in range(3)])
        elif n_head:
            self.sa_heads = MultiHeadAttention(n_head, N_EMBD // n_head, proj=False)
            self.ffwd = FeedForward(N_EMBD) if ffwd else None
        self.ln_f = nn.LayerNorm(N_EMBD) if layernorm else None
        self.lm_head = nn.Linear(N_EMBD, VOCAB)
        self.step = (n_head, ffwd, blocks)

    def forward(self, idx):
        B, T = idx.shape
        x = self.token_embedding_table(idx) + self.position_embedding_table(torch.arange(T))
        if self.step[2]:
            x = self.blocks(x)
        elif self.step[0]:
            x = self.sa_heads(x)
            x = x if self.ffwd is None else self.ffwd(x)
        x = x if self.ln_f is None else self.ln_f(x)
        return self.lm_head(x)


# --- the stages ---------------------------------------------------------------------------------------------------
STAGES = {  # model_type: (n_head, n_layer, the notebook's model, its parameter count in the lecture)
    "lecture_embed": (1, 1, {}, 4_481),
    "lecture_head": (1, 1, {"n_head": 1}, 7_553),
    "lecture_heads": (4, 1, {"n_head": 4}, 7_553),
    "lecture_ffwd": (4, 1, {"n_head": 4, "ffwd": True}, 8_609),
    "lecture_blocks": (4, 3, {"blocks": True}, 16_865),
    "lecture_residual": (4, 3, {"blocks": True, "residual": True}, 23_201),
    "lecture_residual_4x": (4, 3, {"blocks": True, "residual": True, "widen": 4}, 41_921),
    "lecture_layernorm": (4, 3, {"blocks": True, "residual": True, "widen": 4, "layernorm": True}, 42_369),
}


def ours(model_type: str):
    n_head, n_layer, _, _ = STAGES[model_type]
    config = {"vocab_size": VOCAB, "block_size": BLOCK, "n_embd": N_EMBD, "dropout": 0.0, "init": "pytorch"}
    return build_model(model_type, **config, n_head=n_head, n_layer=n_layer).eval()


@pytest.mark.parametrize("model_type", list(STAGES))
def test_each_stage_is_the_notebooks_model_parameter_for_parameter_and_logit_for_logit(model_type):
    mine, notebook = ours(model_type), NotebookModel(**STAGES[model_type][2]).eval()
    assert mine.num_params() == sum(p.numel() for p in notebook.parameters()) == STAGES[model_type][3]
    # the same parameters in the same order: the notebook's weights, copied over one by one, give its logits
    with torch.no_grad():
        for mine_p, theirs in zip(mine.parameters(), notebook.parameters(), strict=True):
            mine_p.copy_(theirs)
    idx = torch.randint(0, VOCAB, (4, BLOCK))
    logits, _ = mine(idx)
    assert logits.shape == (4, BLOCK, VOCAB)
    torch.testing.assert_close(logits, notebook(idx))


def test_the_bigram_stage_is_the_notebooks_table():
    assert build_model("bigram", vocab_size=VOCAB, block_size=BLOCK).num_params() == 4_225


@pytest.mark.parametrize("model_type", [m for m in STAGES if STAGES[m][2].get("n_head") or "blocks" in STAGES[m][2]])
def test_attention_maps_are_each_heads_weights(model_type):
    model = ours(model_type)
    idx = torch.randint(0, VOCAB, (1, BLOCK))
    maps = model.attention_maps(idx)
    n_head, n_layer = STAGES[model_type][:2]
    assert len(maps) == n_layer and all(m.shape == (1, n_head, BLOCK, BLOCK) for m in maps)
    for weights in maps:
        torch.testing.assert_close(weights.sum(-1), torch.ones(1, n_head, BLOCK))
        assert torch.all(weights.triu(1) == 0)


def test_gpt2_init_scales_the_residual_projections_and_pytorchs_leaves_the_defaults():
    config = {"vocab_size": VOCAB, "block_size": BLOCK, "n_embd": N_EMBD, "n_head": 4, "n_layer": 3}
    torch.manual_seed(0)
    gpt2 = build_model("lecture_layernorm", **config, init="gpt2")
    proj = gpt2.blocks[0].sa.proj
    assert proj.bias.abs().sum() == 0 and 0.005 < proj.weight.std() < 0.02 / (2 * 3) ** 0.5 * 1.3
    pytorch = build_model("lecture_layernorm", **config, init="pytorch")
    assert pytorch.blocks[0].sa.proj.bias.abs().sum() > 0  # nn.Linear's own uniform init


def test_a_stage_without_a_cache_refuses_cached_decoding_by_name():
    with pytest.raises(RuntimeError, match="has no KV cache"):
        ours("lecture_heads").next_logits(torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]), torch.tensor(0))


CONFIGS = sorted((REPO / "configs" / "lecture").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_each_config_states_what_its_stage_adds_and_its_true_size(path):
    text = path.read_text()
    assert text.startswith(f"# The lecture, step {path.stem[:2]}: ")
    config = yaml.safe_load(text)
    model = config["model"]
    assert model["learning_rate"] == model["min_lr"] and model["warmup_steps"] == 0  # the lecture's constant rate
    assert model.get("init", "pytorch") == "pytorch" and config["data"]["val_batches"] == 200
    sizes = {k: model[k] for k in ("n_embd", "n_head", "n_layer") if k in model}
    built = build_model(model["model_type"], vocab_size=VOCAB, block_size=config["data"]["block_size"], **sizes)
    stated = int(re.search(r"\(([\d,]+)( parameters)?\)", text).group(1).replace(",", ""))
    assert built.num_params() == stated


def test_the_ladder_reads_every_stage_in_the_lectures_order_from_the_configs():
    from benchmarks.lecture_ladder import stages

    ladder = stages()
    assert [stage for stage, _, _ in ladder] == [p.stem for p in CONFIGS]
    assert ladder[0] == ("01_bigram", "The bigram", 2.49)  # what it adds and the lecture's figure, from its header
    assert [figure for _, _, figure in ladder] == [2.49, None, 2.4, 2.28, 2.24, None, None, 2.09, 2.06]
    assert GPTConfig().init == "gpt2"  # the scaled-up stage (configs/gpt_lecture.yaml) is the production GPT
