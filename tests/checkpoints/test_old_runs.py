"""Runs from before src/ moved into packages (2026-12) keep working: the fixture is a run the old code wrote (its
config.yaml names the logger ``src.board.TensorBoard``; its last.ckpt holds plain data under the old format's keys),
on tests.helpers.TINY_TEXT with a 1-layer, 8-wide model trained 10 steps."""

import shutil

import pytest
import torch

from src.checkpoints.checkpoint import load_checkpoint, model_from_checkpoint
from src.generate import main as generate_main
from src.train import main
from tests.helpers import REPO, TINY_TEXT

pytestmark = pytest.mark.slow  # end to end: trains, or launches processes

FIXTURE = REPO / "tests" / "fixtures" / "old_run"


def old_run(workdir):
    run = workdir / "lightning_logs" / "old"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE / "config.yaml", run / "config.yaml")
    shutil.copy(FIXTURE / "last.ckpt", run / "checkpoints" / "last.ckpt")
    (workdir / "tiny.txt").write_text(TINY_TEXT)
    return run


def test_the_fixture_is_what_the_old_code_wrote():
    assert "class_path: src.board.TensorBoard" in (FIXTURE / "config.yaml").read_text()
    ckpt = torch.load(FIXTURE / "last.ckpt", weights_only=True)  # plain data: no class is unpickled
    assert ckpt["global_step"] == 10 and ckpt["chargpt"] == {"format": 1, "version": "0.1.0"}


def test_an_old_runs_config_yaml_resumes_its_checkpoint(workdir):
    run = old_run(workdir)
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    main(["fit", f"--config={run / 'config.yaml'}", "--trainer.max_steps=20", "--ckpt_path=last"])
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == 20
    assert after["CharDataModule"]["batches_drawn"] == before["CharDataModule"]["batches_drawn"] + 10
    assert not torch.equal(after["state_dict"]["model.lm_head.weight"], before["state_dict"]["model.lm_head.weight"])


def test_an_old_checkpoint_rebuilds_its_model_scores_and_samples(workdir, capsys):
    run = old_run(workdir)
    model, tokenizer = model_from_checkpoint(load_checkpoint(run / "checkpoints" / "last.ckpt"))
    assert model.config.n_embd == 8 and tokenizer.vocab == "".join(sorted(set(TINY_TEXT)))
    generate_main(["--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--prompt", "All:", "--max_new_tokens", "20"])
    assert capsys.readouterr().out.startswith("All:")
    main(["test", f"--config={run / 'config.yaml'}", "--ckpt_path=last"])
    assert "test_loss" in capsys.readouterr().out
