"""The export folder: written and read back by tests/test_export.py; here, what is refused."""

import json

import pytest

from src.errors import UserError
from src.pretrained import from_pretrained, is_pretrained


def test_a_bad_export_folder_is_refused_clearly(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not a readable chargpt export"):
        from_pretrained(tmp_path)


def test_a_folder_from_something_else_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert is_pretrained(tmp_path) and not is_pretrained(tmp_path / "config.json")
    with pytest.raises(UserError, match="not a"):
        from_pretrained(tmp_path)
