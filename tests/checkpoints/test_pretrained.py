"""The export folder: written and read back by tests/test_export.py and tests/test_build.py; here, what is refused."""

import json

import pytest
import torch
from safetensors.torch import save_file

from src.checkpoints.pretrained import from_pretrained, is_pretrained
from src.errors import UserError


def test_an_unreadable_export_folder_is_refused_clearly(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # and no weights at all
    with pytest.raises(UserError, match="not a readable chargpt export"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("config", [{"model_type": "gpt"}, {"chargpt_format": 99, "model_type": "gpt"}])
def test_a_readable_folder_of_another_format_is_refused(tmp_path, config):
    """Config and weights both read; only the format check can refuse it."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    assert is_pretrained(tmp_path) and not is_pretrained(tmp_path / "config.json")
    with pytest.raises(UserError, match="is not a chargpt export of format 1"):
        from_pretrained(tmp_path)
