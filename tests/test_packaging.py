"""What ``pip install .`` (not only ``-e``) ships: every package of src/, the playground page, and configs/ (the
recipes, and src.tune's default space)."""

import sys

import pytest

from src.tune import default_space
from tests.helpers import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_of_src_is_installed():
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "src").rglob("__init__.py")}
    assert packages == set(SETUPTOOLS["packages"]) - {"src.configs"}


def test_the_playground_and_every_config_ship_inside_the_package():
    assert "playground.html" in SETUPTOOLS["package-data"]["src.serving"]
    assert (REPO / "src/serving/playground.html").is_file()
    configs = REPO / SETUPTOOLS["package-dir"]["src.configs"]
    assert default_space() == configs.resolve() / "tune" / "default.yaml" and default_space().is_file()
    patterns = SETUPTOOLS["package-data"]["src.configs"]
    shipped = {p for pattern in patterns for p in configs.glob(pattern)}
    assert shipped == set(configs.rglob("*.yaml"))  # configs in sub-folders too
