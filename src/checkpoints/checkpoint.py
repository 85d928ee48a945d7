"""Writing and reading chargpt checkpoints safely, and rebuilding the model and tokenizer from one alone.

Loading always uses ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is refused, never run.
Writing goes to a temporary file beside the target, synced to disk, then renamed over it: a crash, a kill or a full
disk at any moment leaves the previous file whole.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from src import __version__
from src.checkpoints.build import build
from src.data.tokenizer import Tokenizer
from src.errors import UserError
from src.model import LanguageModel

CHECKPOINT_KEY = "chargpt"  # present in every chargpt checkpoint, holding its format version
FORMAT = 1


def mark(checkpoint: dict[str, Any]) -> None:
    """Mark a checkpoint that is about to be saved as chargpt's (``load_checkpoint`` refuses unmarked files)."""
    checkpoint[CHECKPOINT_KEY] = {"format": FORMAT, "version": __version__}


def save_atomically(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` that either replaces ``path`` with the whole new file or leaves it as it was."""
    path = Path(path)
    # serialised in memory first: torch.save into a file turns a disk error into an opaque RuntimeError
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # beside the target, so the rename stays on one filesystem (a rename across two is a copy)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        sync_folder(path.parent)
    except OSError as err:
        kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
        raise UserError(
            f"could not write checkpoint {path}: {err.strerror or err}; {kept}. "
            f"Free disk space or make {path.parent} writable, then resume with --ckpt_path last"
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut, where the OS can: POSIX syncs a folder through a descriptor
    opened on it. Windows refuses to open a folder (its NTFS journals the rename), and some filesystems refuse to
    sync one: the file itself is already on disk, so either refusal is no reason to fail the write."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's contents, after checking that it is a readable, safe chargpt checkpoint."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist: pass a .ckpt file from lightning_logs/<run>/checkpoints/")
    if path.is_dir():
        raise UserError(f"checkpoint path {path} is a directory: pass a .ckpt file inside it, e.g. {path}/last.ckpt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = [line for line in str(err).splitlines() if "GLOBAL" in line]
        if not unsafe:  # not a pickle of plain data at all: some other file
            raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt?)") from None
        raise UserError(
            f"refused to load {path}: it holds objects that only arbitrary unpickling can rebuild, which could run "
            f"code ({unsafe[0].strip()}). chargpt checkpoints hold plain data only"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt?): {detail}") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise UserError(
            f"{path} is not a chargpt checkpoint (it has no '{CHECKPOINT_KEY}' entry): "
            f"pass a checkpoint written by `python -m src.train fit`"
        )
    refuse_nonfinite(ckpt["state_dict"], path)
    return ckpt


def first_nonfinite(state_dict: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor in ``state_dict`` holding a NaN or an infinity, or None."""
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def refuse_nonfinite(state_dict: dict[str, Any], path: Path) -> None:
    """Every reader's refusal of a model that diverged (chargpt writes none since; older runs could)."""
    name = first_nonfinite(state_dict)
    if name is None:
        return
    others = sorted(p.name for p in path.parent.glob("best-*.ckpt") if p.name != path.name) if path.is_file() else []
    instead = f"; try {others[-1]} beside it" if others else ""
    raise UserError(f"{path} has non-finite weights (first: {name}): it was saved by a run that diverged{instead}")


def readable_checkpoints(folder: Path, but: Path | None = None) -> list[tuple[int, Path]]:
    """(step, path) of each readable chargpt checkpoint in ``folder`` other than ``but``, the newest first."""
    found = []
    for path in sorted(folder.glob("*.ckpt")) if folder.is_dir() else []:
        if but is not None and path.resolve() == but.resolve():
            continue
        try:
            found.append((int(load_checkpoint(path)["global_step"]), path))
        except (UserError, KeyError, TypeError, ValueError):
            continue
    return sorted(found, key=lambda item: -item[0])


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[LanguageModel, Tokenizer]:
    """The trained model (in eval mode, on the checkpoint's map_location) and its tokenizer."""
    model, tokenizer = build(ckpt["hyper_parameters"])
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model.eval(), tokenizer


def init_from_checkpoint(model: LanguageModel, tokenizer: Tokenizer, path: str | Path) -> str:
    """Copy a checkpoint's weights into ``model`` (same architecture, any vocabulary of the same tokenizer kind):
    rows of tokens both vocabularies hold are carried over by character, the others keep their initialisation.
    Returns what was done, in a sentence."""
    source, source_tokenizer = model_from_checkpoint(load_checkpoint(path))
    flag = f"--model.init_from {path}"
    if source_tokenizer.kind != tokenizer.kind:
        raise UserError(f"{flag} uses the {source_tokenizer.kind} tokenizer, this run {tokenizer.kind}: use the same")
    mismatch = [
        f"{f.name} {getattr(source.config, f.name)} vs {getattr(model.config, f.name)}"
        for f in fields(model.config)
        if f.name not in ("vocab_size", "dropout") and getattr(source.config, f.name) != getattr(model.config, f.name)
    ]
    if type(source) is not type(model) or mismatch:
        raise UserError(f"{flag} is another architecture ({', '.join(mismatch) or type(source).__name__}): match it")
    old = {token: i for i, token in enumerate(source_tokenizer.vocab)}
    pairs = [(i, old[token]) for i, token in enumerate(tokenizer.vocab) if token in old]
    new_ids, old_ids = (torch.tensor(ids, dtype=torch.long) for ids in zip(*pairs)) if pairs else (None, None)
    target = model.state_dict()
    with torch.no_grad():
        for name, weights in source.state_dict().items():
            axes = model.vocab_axes.get(name, ())
            if not axes:
                target[name].copy_(weights)
            elif new_ids is not None:
                rows = weights.index_select(axes[0], old_ids)
                if len(axes) == 2:  # a token-by-token table: both axes are ids
                    rows = rows.index_select(axes[1], old_ids)
                    target[name].index_put_((new_ids[:, None], new_ids[None, :]), rows)
                else:
                    target[name].index_copy_(axes[0], new_ids, rows)
    fresh = tokenizer.vocab_size - len(pairs)
    return (
        f"initialised from {path}: every weight, with {len(pairs)} of this vocabulary's {tokenizer.vocab_size} "
        f"tokens carried over by character and {fresh} new ones freshly initialised"
    )
