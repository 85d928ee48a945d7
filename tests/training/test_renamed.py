"""Old names: the class paths of configs written before src/ moved into packages (end to end:
tests/checkpoints/test_old_runs.py; renamed keys: tests/test_train.py)."""

from __future__ import annotations

import yaml

from src.training.renamed import with_moved_classes


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
