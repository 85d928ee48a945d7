"""The Hugging Face folder (``src.export --format hf``): what ``transformers`` loads, samples and scores.

A GPT whose options GPT-2 has (learned positions, LayerNorm, ReLU or its square, biases or none, tied embeddings or
not) becomes a plain ``GPT2LMHeadModel``: its q/k/v and Linear weights transposed into GPT-2's Conv1D layout, and
the output layer's bias, which GPT-2 lacks, folded into the final LayerNorm's (softmax ignores a constant shift, so
``W b' = W b + bias + c`` is solved for ``b'``, exactly when the vocabulary has at most ``n_embd + 1`` tokens). Any
other model ships its own modeling code, generated here from chargpt's source (``src/model/``), so there is one
definition of the model, which transformers loads with ``trust_remote_code=True``. The multi-token head trains
only, and is left out. ``config.json`` also holds chargpt's own description (key ``chargpt``), from which
``src.generate`` rebuilds the model (``read_hf``).
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from src.checkpoints.build import build, describe
from src.data.tokenizer import Tokenizer, prompt_ids
from src.errors import UserError
from src.model import GPT, GPTConfig, LanguageModel

MODEL_SOURCES = ["kv_cache", "dropout", "base", "bigram", "gpt", "lecture", "registry"]
GPT2_LACKS = {"rope": False, "norm": "layernorm", "qk_norm": False, "logit_softcap": None, "unet": False,
              "value_residual": False, "attn_gate": False}  # fmt: skip
FOLD_TOLERANCE = 1e-5  # the folded bias's largest error in logits, relative to the bias's size


def gpt2_refusal(model: LanguageModel) -> str | None:
    """Why ``model`` is not a plain GPT-2 (it then ships its own code), or None."""
    if not isinstance(model, GPT):
        return f"{type(model).__name__} is not the GPT"
    c = model.config
    other = [f"{k}={getattr(c, k)!r}" for k, v in GPT2_LACKS.items() if getattr(c, k) != v]
    if other:
        return "GPT-2 has no " + ", ".join(other)
    if c.bias and c.vocab_size > c.n_embd + 1:
        return f"its output bias does not fold into {c.n_embd} LayerNorm channels for {c.vocab_size} tokens"
    return None


def gpt2_weights(model: GPT) -> dict[str, torch.Tensor]:
    """``model``'s weights under GPT2LMHeadModel's names and layouts (Conv1D: (in, out))."""
    c, sd = model.config, {k: v.detach().float() for k, v in model.state_dict().items()}
    C = c.n_embd
    out = {
        "transformer.wte.weight": sd["transformer.wte.weight"],
        "transformer.wpe.weight": sd["transformer.wpe.weight"],
    }

    def ln(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.weight"]
        out[f"{dst}.bias"] = sd.get(f"{src}.bias", torch.zeros(C))

    def linear(src: str, dst: str, width: int) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.weight"].t().contiguous()
        out[f"{dst}.bias"] = sd.get(f"{src}.bias", torch.zeros(width))

    for i in range(c.n_layer):  # the same names as GPT-2's: only the layouts change
        block = f"transformer.h.{i}"
        ln(f"{block}.ln_1", f"{block}.ln_1")
        linear(f"{block}.attn.c_attn", f"{block}.attn.c_attn", 3 * C)
        linear(f"{block}.attn.c_proj", f"{block}.attn.c_proj", C)
        ln(f"{block}.ln_2", f"{block}.ln_2")
        linear(f"{block}.mlp.c_fc", f"{block}.mlp.c_fc", 4 * C)
        linear(f"{block}.mlp.c_proj", f"{block}.mlp.c_proj", C)
    ln("transformer.ln_f", "transformer.ln_f")
    head = sd["lm_head.weight"]
    out["lm_head.weight"] = head
    if "lm_head.bias" in sd:  # W b' = W b + bias + c: least squares over (b', c)
        A = torch.cat([head, -torch.ones(head.size(0), 1)], dim=1).double()
        target = (head.double() @ out["transformer.ln_f.bias"].double() + sd["lm_head.bias"].double())[:, None]
        solution = torch.linalg.lstsq(A, target).solution[:, 0]
        folded = solution[:-1]
        error = (A @ solution[:, None] - target).abs().max().item()
        if error > FOLD_TOLERANCE * max(1.0, sd["lm_head.bias"].abs().max().item()):
            raise UserError(f"the output bias does not fold exactly into the final LayerNorm (error {error:.2g})")
        out["transformer.ln_f.bias"] = folded.float()
    return {k: v.contiguous() for k, v in out.items()}


def gpt2_config(model: GPT, tokenizer: Tokenizer) -> dict[str, Any]:
    c = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "activation_function": c.mlp,  # transformers' "relu" and "relu2" are chargpt's
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": None,
        "torch_dtype": "float32",
    }


def model_sources() -> dict[str, str]:
    """chargpt's model for ``trust_remote_code``: each file of src/model/ (and src/errors.py) as a module of the
    folder, ``chargpt_<name>.py``, its imports of the package made relative (transformers copies a modeling file's
    relative imports with it)."""
    src = Path(__file__).resolve().parents[1]
    files = {"errors": src / "errors.py", **{name: src / "model" / f"{name}.py" for name in MODEL_SOURCES}}
    out = {}
    for name, path in files.items():
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"^from src\.(?:model\.)?(\w+) import", r"from .chargpt_\1 import", text, flags=re.M)
        out[f"chargpt_{name}.py"] = (
            f"# Generated by chargpt's src.export --format hf from {path.relative_to(src.parent)}\n{text}"
        )
    return out


def modeling_source(shipped: list[str]) -> str:
    """modeling_chargpt.py: MODELING, importing every shipped module (``shipped``: their file names) by name.
    transformers 4.54-5.0 copy a local folder's modeling file with its own relative imports only, not with theirs."""
    stems = [Path(name).stem for name in shipped]
    lines = [f"from .{s} import __name__ as _{s}  # noqa: F401 (transformers copies it)" for s in stems]
    return MODELING.replace("# SHIPPED\n", "\n".join(lines) + "\n")


MODELING = '''# Generated by chargpt's src.export --format hf: its model (chargpt_*.py) behind transformers' interface.
from __future__ import annotations

from dataclasses import fields

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .chargpt_base import GPTConfig
from .chargpt_registry import MODELS
from .configuration_chargpt import ChargptConfig

# SHIPPED


class ChargptForCausalLM(PreTrainedModel, GenerationMixin):
    """chargpt's model (``model``) behind transformers' interface: the logits at every position of ``input_ids``,
    of which at most the last ``block_size`` are read (the lecture's crop); no KV cache."""

    config_class = ChargptConfig
    base_model_prefix = "model"
    _supports_cache_class = False

    def __init__(self, config: ChargptConfig) -> None:
        super().__init__(config)
        self.model = self._build()
        self._buffers_ready = False
        self.post_init()

    def _build(self):
        values = dict(self.config.chargpt)
        known = {f.name for f in fields(GPTConfig)}
        return MODELS[values["model_type"]](GPTConfig(**{k: v for k, v in values.items() if k in known}))

    def _init_weights(self, module) -> None:
        pass  # the weights come from model.safetensors

    def _rebuild_buffers(self) -> None:
        """The buffers the weights file does not hold (the causal mask, rotary tables: computed from the config),
        which loading on the meta device leaves unset."""
        with torch.device("cpu"):
            fresh = self._build()
        saved = set(self.model.state_dict())
        device = next(self.model.parameters()).device
        for name, buffer in fresh.named_buffers():
            if name not in saved:
                owner, _, attr = name.rpartition(".")
                self.model.get_submodule(owner)._buffers[attr] = buffer.to(device)
        self._buffers_ready = True

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if not self._buffers_ready:
            self._rebuild_buffers()
        logits, _ = self.model(input_ids[:, -self.model.config.block_size :])
        return CausalLMOutput(logits=logits)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}
'''

CONFIGURATION = '''# Generated by chargpt's src.export --format hf: do not edit.
from transformers import PretrainedConfig


class ChargptConfig(PretrainedConfig):
    """chargpt's description of its model (``chargpt``: model_type and GPTConfig's fields)."""

    model_type = "chargpt"

    def __init__(self, chargpt=None, **kwargs) -> None:
        self.chargpt = chargpt or {}
        super().__init__(**kwargs)
'''


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """The tokenizer as a ``tokenizers`` JSON (a fast tokenizer, no remote code): chars, each character its chargpt
    id (a character outside the vocabulary is an error, as in chargpt); bytes, every byte (any text)."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Fast

    every = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    if tokenizer.kind == "bytes":
        by_byte = _bytes_to_unicode()
        fast = Fast(models.WordLevel({by_byte[b]: b for b in range(256)}, unk_token=None))
        fast.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), every]
        )
        fast.decoder = decoders.ByteLevel()
    else:
        fast = Fast(models.WordLevel({ch: i for i, ch in enumerate(tokenizer.vocab)}, unk_token=None))
        fast.pre_tokenizer = every
        fast.decoder = decoders.Fuse()
    return fast.to_str(pretty=True)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, as ByteLevel uses it."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def save_hf(model: LanguageModel, tokenizer: Tokenizer, folder: str | Path, card: str) -> str:
    """The folder; returns "gpt2" or the reason the model ships its own code."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    own = describe(model, tokenizer) | {"mtp_weight": 0.0}  # the multi-token head trains only
    refusal = gpt2_refusal(model)
    if refusal is None:
        config = gpt2_config(model, tokenizer) | {"chargpt": own}
        weights = gpt2_weights(model)
        if model.config.tie_embeddings:
            weights.pop("lm_head.weight")
    else:
        config = {
            "architectures": ["ChargptForCausalLM"],
            "model_type": "chargpt",
            "auto_map": {
                "AutoConfig": "configuration_chargpt.ChargptConfig",
                "AutoModelForCausalLM": "modeling_chargpt.ChargptForCausalLM",
            },
            "chargpt": own,
            "vocab_size": model.config.vocab_size,
            "max_position_embeddings": model.config.block_size,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "use_cache": False,  # the wrapper recomputes the window each step: no transformers cache to build
        }
        weights = {f"model.{k}": v.detach().float().clone().contiguous() for k, v in model.state_dict().items()
                   if not k.startswith("mtp_head.")}  # fmt: skip
        sources = model_sources()
        for name, text in sources.items():
            (folder / name).write_text(text, encoding="utf-8")
        (folder / "modeling_chargpt.py").write_text(modeling_source(list(sources)), encoding="utf-8")
        (folder / "configuration_chargpt.py").write_text(CONFIGURATION, encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    generation = {"do_sample": True, "temperature": 0.8, "max_length": model.config.block_size}
    if refusal is not None:
        generation["use_cache"] = False
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    (folder / "tokenizer.json").write_text(tokenizer_json(tokenizer), encoding="utf-8")
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.block_size,
                        "clean_up_tokenization_spaces": False}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(card, encoding="utf-8")
    return "gpt2" if refusal is None else refusal


def read_hf(folder: Path, config: dict) -> tuple[LanguageModel, Tokenizer, dict[str, torch.Tensor]]:
    """chargpt's model (freshly built), tokenizer and state dict from an hf folder (``config``: its config.json),
    GPT-2's or its own code's."""
    from safetensors.torch import load_file

    model, tokenizer = build(config["chargpt"])
    weights = load_file(folder / "model.safetensors")
    if config["model_type"] == "chargpt":
        return model, tokenizer, {k.removeprefix("model."): v for k, v in weights.items()}
    state = {}
    for name, value in model.state_dict().items():  # the inverse of gpt2_weights; the output bias stays folded
        if name == "lm_head.weight" and "lm_head.weight" not in weights:
            value = weights["transformer.wte.weight"]
        elif name in weights:
            value = weights[name]
            linear = re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", name)
            value = value.t().contiguous() if linear else value
        elif name == "lm_head.bias":
            value = torch.zeros_like(value)
        state[name] = value
    return model, tokenizer, state


def model_card(model: LanguageModel, tokenizer: Tokenizer, ckpt: dict, plain: bool, name: str) -> str:
    c, fit = model.config, (ckpt.get("callbacks") or {}).get("FitSummary") or {}
    best = fit.get("best")
    shown = {f.name: getattr(c, f.name) for f in fields(GPTConfig) if getattr(c, f.name) != f.default}
    options = ", ".join(f"{k}={v}" for k, v in shown.items()) or "the lecture's"
    load = "" if plain else ", trust_remote_code=True"
    prefix = prompt_ids(tokenizer, "")[0]
    val = (
        f"{best[0]:.4f} nats per character ({best[0] / 0.6931471805599453:.4f} bits) at step {best[1]}" if best else "-"
    )
    return f"""---
library_name: transformers
tags: [chargpt, character-level, text-generation]
---

# {name}

A character-level GPT trained with chargpt (Karpathy's "Let's build GPT" lecture as software):
{model.num_params():,} parameters, {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, a context of {c.block_size}
{"characters" if tokenizer.kind == "chars" else "bytes"} ({tokenizer.kind} tokenizer, {c.vocab_size} tokens). Options:
{options}. {"A plain GPT2LMHeadModel." if plain else "Its modeling code is in this folder (generated from chargpt)."}

- **Validation loss:** {val}.
- **Trained:** {ckpt.get("global_step", "?")} steps of chargpt's `fit`; its run's config is chargpt's `config.json` key.

## Sample

With transformers:

```python
from transformers import pipeline
generate = pipeline("text-generation", model="path/to/this/folder"{load})
print(generate("ROMEO:", max_new_tokens=200, do_sample=True, temperature=0.8)[0]["generated_text"])
```

With chargpt: `python -m src.generate --ckpt_path path/to/this/folder --prompt "ROMEO:"`.

A character outside the vocabulary is an error, as in chargpt. Upload: `huggingface-cli upload <user>/{name} .`

## Evaluate

`lm_eval --model hf --model_args pretrained=path/to/this/folder,prefix_token_id={prefix}{load.replace(" ", "")}`: the
prefix is the newline (token {prefix}), which starts a document as chargpt's server tells
lm-eval, so both score the same bits per byte.
"""
