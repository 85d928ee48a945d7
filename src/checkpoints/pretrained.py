"""The export folder: ``model.safetensors`` (weights only) and ``config.json`` (sizes, tokenizer, vocabulary), the
layout the Hugging Face Hub uses, readable anywhere without this repository's checkpoint format or pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

from src.checkpoints.build import build, describe
from src.checkpoints.checkpoint import refuse_nonfinite
from src.checkpoints.hf import read_hf
from src.data.tokenizer import Tokenizer
from src.errors import UserError
from src.model import LanguageModel

CONFIG, WEIGHTS = "config.json", "model.safetensors"
FORMAT = 1


def save_pretrained(model: LanguageModel, tokenizer: Tokenizer, folder: str | Path) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"chargpt_format": FORMAT, **describe(model, tokenizer)}
    (folder / CONFIG).write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    # copies: safetensors refuses tensors that share memory, as tied embeddings do (loading ties them again)
    weights = {name: tensor.detach().cpu().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, folder / WEIGHTS, metadata={"format": "pt"})


def is_pretrained(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def from_pretrained(folder: str | Path, device: str = "cpu") -> tuple[LanguageModel, Tokenizer]:
    """The model (in eval mode) and tokenizer an export folder holds."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        hf = "chargpt" in config  # the Hugging Face folder (src.export --format hf)
        if hf:
            model, tokenizer, weights = read_hf(folder, config)
        else:
            weights = load_file(folder / WEIGHTS, device=str(device))
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(
            f"{folder} is not a readable chargpt export ({err}): make one with python -m src.export"
        ) from None
    if not hf:
        if config.get("chargpt_format") != FORMAT:
            raise UserError(f"{folder / CONFIG} is not a chargpt export of format {FORMAT}")
        model, tokenizer = build(config)
    refuse_nonfinite(weights, folder / WEIGHTS)
    model.load_state_dict(weights)
    return model.to(device).eval(), tokenizer
