"""The CLI's rules on the command line itself: the default config, the command that resumes a run, and the class
paths of configs written before src/ moved into packages (end to end: tests/checkpoints/test_old_runs.py)."""

from __future__ import annotations

import pytest
import yaml

from src.training.cli import build_cli, resume_command, with_moved_classes
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


def test_old_class_paths_move_in_flags_and_config_files(tmp_path):
    old = {"trainer": {"logger": {"class_path": "src.board.TensorBoard", "init_args": {"name": "x"}}}, "seed": 3}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump({"seed": 3}))
    args = ["fit", "--config", str(tmp_path / "old.yaml"), f"--config={tmp_path / 'new.yaml'}"]
    args += ["--trainer.logger=src.board.TensorBoard", "--model.optimizer=muon"]
    out = with_moved_classes(args)
    assert yaml.safe_load(out[2])["trainer"]["logger"] == {
        "class_path": "src.training.board.TensorBoard", "init_args": {"name": "x"}
    }  # fmt: skip
    assert out[3] == f"--config={tmp_path / 'new.yaml'}"  # nothing moved: the file itself
    assert out[4:] == ["--trainer.logger=src.training.board.TensorBoard", "--model.optimizer=muon"]
