"""What TensorBoard shows: the HPARAMS table, attention maps, the projector, readable curves, each step once."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from src.train import main
from src.training.board import token_label
from tests.helpers import REPO, tiny_args

pytestmark = pytest.mark.slow  # end to end: trains, or launches processes


def events(run) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_token_labels_name_whitespace_control_characters_and_high_bytes():
    assert [token_label(t, "chars") for t in "\n\t a\x07é"] == ["\\n", "\\t", "space", "a", "U+0007", "é"]
    assert token_label(chr(0xC3), "bytes") == "0xc3" and token_label("A", "bytes") == "A"


def test_a_run_shows_hparams_attention_embeddings_and_readable_curves(workdir, tiny_corpus):
    main(["fit", *tiny_args(tiny_corpus, max_steps=20)])
    run = workdir / "lightning_logs" / "t"
    acc = events(run)
    scalars = acc.Tags()["scalars"]
    assert "epoch" not in scalars
    for tag in ("lr-MuonAdamW/muon", "lr-MuonAdamW/decay", "grad_norm", "mfu", "tokens_per_sec"):  # the default: Muon
        assert tag in scalars, tag
    best, final = acc.Scalars("best_val_loss"), acc.Scalars("final_val_loss")
    assert [e.value for e in final] == [e.value for e in acc.Scalars("val_loss")]
    assert best[-1].value == min(e.value for e in final)
    assert 0 < acc.Scalars("mfu")[-1].value < 1
    assert {"attention/layer_0"} <= set(acc.Tags()["images"])
    plugin = HParamsPluginData()
    hparams = acc.PluginTagToContent("hparams")
    plugin.ParseFromString(hparams["_hparams_/experiment"])
    assert {m.name.tag for m in plugin.experiment.metric_infos} == {"best_val_loss", "final_val_loss", "tokens_per_sec"}
    plugin.ParseFromString(hparams["_hparams_/session_start_info"])
    values = plugin.session_start_info.hparams
    assert values["model/n_embd"].number_value == 16 and values["run_name"].string_value == "t"
    assert values["data/block_size"].number_value == 16 and values["model/vocab_size"].number_value > 0
    assert "mfu_peak" in {tag.split("/")[0] for tag in acc.Tags()["tensors"]}
    projector = (run / "projector_config.pbtxt").read_text()
    assert "token_embedding" in projector
    metadata = next(run.rglob("metadata.tsv")).read_text().split("\n")
    assert "\\n" in metadata and "space" in metadata


def test_attention_maps_every_n_steps_draws_only_at_those_validations(workdir, tiny_corpus, capsys):
    main(["fit", *tiny_args(tiny_corpus, max_steps=30), "--attention_maps.every_n_steps=20"])
    images = events(workdir / "lightning_logs" / "t").Images("attention/layer_0")
    assert [image.step for image in images] == [20]  # validations at 10, 20 and 30
    with pytest.raises(SystemExit):
        main(["fit", *tiny_args(tiny_corpus, run_name="u"), "--attention_maps.every_n_steps=0"])
    assert "--attention_maps.every_n_steps must be 1 or more, or null: 0" in capsys.readouterr().err


def test_a_resumed_run_logs_each_step_once(workdir, tiny_corpus):
    main(["fit", *tiny_args(tiny_corpus, max_steps=20)])
    checkpoints = workdir / "lightning_logs/t/checkpoints"
    shutil.copy(checkpoints / "last.ckpt", workdir / "step20.ckpt")
    main(["fit", *tiny_args(tiny_corpus, max_steps=30), "--ckpt_path=last"])
    # as after a kill at step 30 with last.ckpt still at step 20: the same steps run, and are logged, again
    shutil.copy(workdir / "step20.ckpt", checkpoints / "last.ckpt")
    main(["fit", *tiny_args(tiny_corpus, max_steps=30), "--ckpt_path=last"])
    acc = events(workdir / "lightning_logs/t")
    for tag in ("train_loss", "val_loss", "tokens_per_sec", "lr-MuonAdamW/decay"):
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), (tag, steps)
        assert max(steps) >= 29, (tag, steps)


def test_output_to_a_file_gets_plain_lines_instead_of_a_progress_bar(workdir, tiny_corpus):
    args = [a for a in tiny_args(tiny_corpus, max_steps=20) if "enable_progress_bar" not in a]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "src.train", "fit", *args], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 5/20", "step 10/20", "step 15/20", "step 20/20"]
    assert all(" | loss " in line and "tokens/s" in line and " | ETA " in line for line in lines)
    assert "\r" not in done.stdout + done.stderr and "chargpt: MFU peak:" in done.stdout


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux's script for a pseudo-terminal")
def test_a_terminal_gets_the_progress_bar_and_no_plain_lines(workdir, tiny_corpus):
    args = [a for a in tiny_args(tiny_corpus, max_steps=20) if "enable_progress_bar" not in a]
    command = shlex.join([sys.executable, "-m", "src.train", "fit", *args])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sized = f"stty cols 120 rows 40; {command}"  # script's terminal has no size when its own output is a pipe
    done = subprocess.run(["script", "-qec", sized, "/dev/null"], cwd=workdir, env=env, capture_output=True)
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, out[-3000:]
    assert "\r" in out and "it/s" in out  # the redrawn bar
    assert not re.search(r"^step \d+/20 \|", out, re.MULTILINE)


def test_a_run_without_a_logger_trains_and_keeps_its_config_in_its_folder(workdir, tiny_corpus):
    main(["fit", *tiny_args(tiny_corpus, max_steps=12), "--trainer.logger=false"])  # used to stop at train start
    assert (workdir / "lightning_logs/t/checkpoints/last.ckpt").exists()
    assert not (workdir / "config.yaml").exists()  # Lightning's default: the working directory
    assert "run_name: t" in (workdir / "lightning_logs/t/config.yaml").read_text()
