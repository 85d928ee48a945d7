"""The floors stated in four places are one set: pyproject.toml's lower bounds, scripts/matrix.py's floors session
(which installs and runs exactly those), src/__init__.py's start-up check and the README."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest

import src
from tests.helpers import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def matrix():
    spec = importlib.util.spec_from_file_location("matrix", REPO / "scripts" / "matrix.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("matrix", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def release(version: str) -> tuple[int, ...]:
    parts = tuple(int(p) for p in version.split("."))
    return parts + (0,) * (3 - len(parts))


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    """{name: floor} of requirements written ``name[extras]>=floor``."""
    pattern = r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([\d.]+)"
    return dict(re.fullmatch(pattern, r.replace(" ", "")).groups() for r in requirements)


def pyproject_floors() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {"python": project["requires-python"].removeprefix(">="), **lower_bounds(project["dependencies"])}


def test_the_floors_session_installs_what_pyproject_states():
    floors, session = matrix().FLOORS, matrix().SESSIONS["floors"]
    stated = pyproject_floors()
    assert floors.keys() == stated.keys(), "scripts/matrix.py's FLOORS and pyproject.toml name different packages"
    for name, floor in stated.items():
        assert release(floors[name]) == release(floor), f"{name}: pyproject.toml says >={floor}, matrix {floors[name]}"
    assert session.python == floors["python"] and session.resolution == "lowest-direct"


def test_the_floors_session_installs_the_hf_extra_at_its_floor():
    """The transformers floor is a tested one (scripts/matrix.py says how it was found), for the hf extra."""
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["hf"]
    stated = lower_bounds(extra)
    floors = matrix().EXTRA_FLOORS
    assert floors.keys() == stated.keys()
    for name, floor in stated.items():
        assert release(floors[name]) == release(floor), f"{name}: the hf extra says >={floor}, matrix {floors[name]}"
    assert floors.items() <= matrix().SESSIONS["floors"].expect.items()


def test_the_start_up_check_and_the_readme_state_the_same_floors():
    floors = matrix().FLOORS
    python, torch = release(floors["python"])[:2], release(floors["torch"])[:2]
    assert src.PYTHON_FLOOR == python and src.TORCH_FLOOR == torch
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"Python {python[0]}.{python[1]} or newer" in readme
    assert f"PyTorch {torch[0]}.{torch[1]} or newer" in readme
