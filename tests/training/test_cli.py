"""The CLI's rules on the command line itself: the default config, and the command that resumes a run."""

from __future__ import annotations

import pytest

from src.training.cli import build_cli, resume_command
from tests.helpers import REPO


def test_resume_command_replaces_any_ckpt_path_and_the_changed_flags():
    args = ["fit", "--config", "my run.yaml", "--ckpt_path", "x.ckpt", "--ckpt_path=y.ckpt", "--trainer.max_steps=9"]
    expected = "python -m src.train fit --config 'my run.yaml' --trainer.max_steps=9 --ckpt_path last"
    assert resume_command(args) == expected
    changed = resume_command(["fit", "--model.learning_rate=0.01"], "a.ckpt", {"--model.learning_rate": "0.005"})
    assert changed == "python -m src.train fit --model.learning_rate 0.005 --ckpt_path a.ckpt"


def print_config(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        build_cli(["fit", *args, "--print_config"])
    return capsys.readouterr().out


def test_the_codes_defaults_are_the_default_config(capsys):
    """One default: fit without --config trains what configs/shakespeare_char.yaml spells out."""
    assert print_config([], capsys) == print_config(
        ["--config", str(REPO / "configs" / "shakespeare_char.yaml")], capsys
    )
