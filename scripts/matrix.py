"""The floors we state, run: each session installs chargpt from scratch into its own environment (uv), runs the
quick test tier and scripts/e2e.py there, and one table says what ran.

    pip install uv
    python scripts/matrix.py                   # both sessions: floors, then newest
    python scripts/matrix.py floors            # one

- floors: Python 3.10 and every direct dependency at the lowest version pyproject.toml allows (uv's
  ``--resolution lowest-direct``): torch 2.9.0, lightning 2.6.4, numpy 1.24.0, ...; the versions it installs are
  checked against FLOORS, which tests/test_packaging.py checks against pyproject.toml, src/__init__.py and the README.
- newest: Python 3.13 and the newest release of everything the registry serves.

Run it before changing a dependency or a floor. Each environment (in .matrix/<session>) is 5-7 GB: on Linux x86-64
the registry's PyTorch builds are CUDA builds, which run on the CPU. Not in CI, which installs the CPU wheel only.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what the floors session must end up with: pyproject.toml's lower bounds, as versions
FLOORS = {
    "python": "3.10",
    "torch": "2.9.0",
    "lightning": "2.6.4",
    "torchmetrics": "1.4.0",
    "tensorboard": "2.21.0",
    "jsonargparse": "4.39.0",
    "numpy": "1.24.0",
    "pillow": "10.1.0",
    "safetensors": "0.4.0",
    "fastapi": "0.110.0",
    "uvicorn": "0.29.0",
    "prometheus-client": "0.17.0",
}
# the hf extra's (src.export --format hf): the lowest transformers that passes tests/checkpoints/test_hf.py and
# lm-eval's hf backend (4.53 fails: its pipeline builds no tokenizer for a remote-code model), with its tokenizers
EXTRA_FLOORS = {"transformers": "4.54.0", "tokenizers": "0.21.0"}
SHOWN = ("torch", "lightning", "numpy", "jsonargparse")


@dataclass(frozen=True)
class Session:
    python: str
    resolution: str  # uv's: lowest-direct or highest
    expect: dict[str, str] | None = None


SESSIONS = {
    "floors": Session(FLOORS["python"], "lowest-direct", FLOORS | EXTRA_FLOORS),
    "newest": Session("3.13", "highest"),
}


def interpreter(version: str) -> str:
    """pyenv's newest patch release of Python ``version``, else a python<version> on PATH that runs (pyenv's shims
    are on PATH and fail for a version not selected)."""
    pyenv = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")), reverse=True)
    for path in [*pyenv, shutil.which(f"python{version}")]:
        if path and subprocess.run([path, "-c", "pass"], capture_output=True).returncode == 0:
            return path
    sys.exit(f"matrix: no Python {version} (~/.pyenv/versions/{version}.*, or python{version} on PATH): install it")


def sh(*cmd: str, log, env: dict | None = None, timeout: float = 3600) -> int:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode


def versions(py: str) -> dict[str, str]:
    names = ", ".join(f"{n!r}: m.version({n!r})" for n in FLOORS | EXTRA_FLOORS if n != "python")
    code = "import importlib.metadata as m, json, platform; "
    code += f"print(json.dumps({{'python': platform.python_version(), {names}}}))"
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def run(name: str, session: Session, root: Path) -> dict:
    env_dir, log_path = root / name, root / f"{name}.log"
    started = time.perf_counter()
    row = {"session": name, "result": "", "time": 0.0}
    with open(log_path, "w") as log:
        py = str(env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
        steps = [
            ("venv", ["uv", "venv", "--clear", "--python", interpreter(session.python), str(env_dir)]),
            ("install", ["uv", "pip", "install", "--python", py, "--resolution", session.resolution, "-e", ".[dev]"]),
        ]
        for step, cmd in steps:
            if sh(*cmd, log=log) != 0:
                row["result"] = f"{step} failed"
                break
        else:
            row.update(versions(py))
            wrong = {k: row.get(k) for k, v in (session.expect or {}).items() if not str(row.get(k, "")).startswith(v)}
            tests = run_tests(py, log)
            e2e = "e2e ok" if sh(py, "scripts/e2e.py", log=log) == 0 else "e2e FAILED"
            row["result"] = f"{tests}; {e2e}" + (f"; not at the floor: {wrong}" if wrong else "")
    row["time"] = time.perf_counter() - started
    return row


def run_tests(py: str, log) -> str:
    out_path = Path(log.name).with_suffix(".pytest")
    with open(out_path, "w") as out:
        sh(py, "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider", log=out)
    text = out_path.read_text()
    log.write(text)
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|error).*?) in [\d.]+s", text, re.M)
    return summary[-1] if summary else "pytest did not finish"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sessions", nargs="*", help=f"any of {', '.join(SESSIONS)} (default: all)")
    p.add_argument("--root", type=Path, default=REPO / ".matrix", help="where the environments and logs go")
    a = p.parse_args()
    unknown = [s for s in a.sessions if s not in SESSIONS]
    if unknown:
        p.error(f"no session {', '.join(unknown)}: pick from {', '.join(SESSIONS)}")
    if not shutil.which("uv"):
        sys.exit("matrix: needs uv: pip install uv")
    a.root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.sessions or list(SESSIONS):
        rows.append(run(name, SESSIONS[name], a.root.resolve()))
        print(f"{name}: {rows[-1]['result']} ({rows[-1]['time']:.0f} s; log: {a.root / name}.log)", flush=True)
    print(f"\n| session | python | {' | '.join(SHOWN)} | result | time |")
    print("| --- " * (4 + len(SHOWN)) + "|")
    for r in rows:
        shown = " | ".join(r.get(n, "-") for n in SHOWN)
        print(f"| {r['session']} | {r.get('python', '-')} | {shown} | {r['result']} | {r['time'] / 60:.1f} min |")
    sys.exit(0 if all("failed" not in r["result"].lower() and "not at" not in r["result"] for r in rows) else 1)


if __name__ == "__main__":
    main()
