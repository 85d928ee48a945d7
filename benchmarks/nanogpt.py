"""Where the benchmarks find nanoGPT, the reference they compare against: its own unmodified files, run beside
chargpt, never copied into it.

The folder comes from ``--nanogpt DIR``, else the ``NANOGPT_DIR`` environment variable, else
``../shared/reference/nanogpt`` beside this checkout. It needs nanoGPT's ``model.py`` (generation) or ``train.py``,
``configurator.py`` and ``config/train_shakespeare_char.py`` (the training recipe): a clone of
https://github.com/karpathy/nanoGPT has them (measured at commit 3adf61e).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "reference" / "nanogpt"
FETCH = "fetch it with `git clone https://github.com/karpathy/nanoGPT` and pass --nanogpt nanoGPT (or set NANOGPT_DIR)"


def add_flag(parser) -> None:
    parser.add_argument(
        "--nanogpt",
        default=os.environ.get("NANOGPT_DIR", str(DEFAULT)),
        help="a folder with nanoGPT's files (default: $NANOGPT_DIR, else ../shared/reference/nanogpt)",
    )


def missing(folder: str | Path, *files: str) -> str | None:
    """None when ``folder`` holds ``files``, else a sentence saying what is absent and how to get it."""
    absent = [name for name in files if not (Path(folder) / name).is_file()]
    if not absent:
        return None
    return f"nanoGPT's {', '.join(absent)} not found in {folder}: {FETCH}"
