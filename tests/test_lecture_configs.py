"""Every stage of configs/lecture/ goes through the ordinary machinery: fit, exact resume, test, TensorBoard's
attention maps, src.generate and src.export; and the ladder command runs end to end on a tiny setting."""

import re
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.export import main as export_main
from src.generate import main as generate_main
from src.train import main
from tests.helpers import REPO, TINY_TEXT

pytestmark = pytest.mark.slow  # end to end: trains, or launches processes

CONFIGS = sorted((REPO / "configs" / "lecture").glob("*.yaml"))
TINY = ["--trainer.val_check_interval=5", "--data.val_batches=2", "--sample.max_new_tokens=10"]


def fit(config, run: str, steps: int, *extra: str) -> dict:
    main(["fit", f"--config={config}", f"--run_name={run}", f"--trainer.max_steps={steps}", *TINY, *extra])
    return torch.load(f"lightning_logs/{run}/checkpoints/last.ckpt", weights_only=True)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_each_stage_fits_resumes_exactly_tests_samples_and_exports(config, workdir, capsys):
    (workdir / "tiny.txt").write_text(TINY_TEXT)
    data = "--data.path=tiny.txt"
    whole = fit(config, "whole", 10, data)
    no_maps = "--attention_maps.enabled=false"  # drawn for the whole run, checked below
    fit(config, "parts", 5, data, no_maps)
    parts = fit(config, "parts", 10, data, no_maps, "--ckpt_path=last")
    assert parts["global_step"] == 10
    for name, weights in whole["state_dict"].items():
        assert torch.equal(parts["state_dict"][name], weights), name
    capsys.readouterr()
    main(["test", f"--config={config}", "--run_name=parts", data, "--ckpt_path=last"])
    assert "test_loss" in capsys.readouterr().out
    if "bigram" not in config.stem and "embed" not in config.stem:  # the stages that have attention
        events = EventAccumulator(str(workdir / "lightning_logs/whole"), size_guidance={"images": 0})
        assert "attention/layer_0" in events.Reload().Tags()["images"]
    ckpt = "lightning_logs/parts/checkpoints/last.ckpt"
    export_main([f"--ckpt_path={ckpt}", "--out=exported", "--no-onnx"])
    args = ["--prompt=All:", "--max_new_tokens=20", "--seed=3"]
    generate_main([f"--ckpt_path={ckpt}", *args])
    from_checkpoint = capsys.readouterr().out
    generate_main(["--ckpt_path=exported", *args])
    assert capsys.readouterr().out == from_checkpoint and from_checkpoint.startswith("All:")


def test_the_ladder_prints_its_table_for_both_recipes(tmp_path, shakespeare):
    command = [sys.executable, "benchmarks/lecture_ladder.py", "--seeds", "1", "--stages", "04_four_heads"]
    command += ["--root", str(tmp_path), "--", "--trainer.max_steps=10", "--trainer.val_check_interval=5"]
    done = subprocess.run([*command, "--data.val_batches=2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 0")]
    assert [row.split(" | ")[0] for row in rows] == ["| 04_four_heads"] and "| 7,553 | 2.28 |" in rows[0]
    assert all(len(re.findall(r"\| \d\.\d{4} \| \d+ (?=\|)", row)) == 2 for row in rows)  # val and wall, per recipe
    runs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("lecture/*/*/*"))
    assert runs == ["lecture/chargpt/04_four_heads/seed1", "lecture/lecture/04_four_heads/seed1"]  # one folder


def test_the_ladder_states_a_mean_and_half_the_range():
    from benchmarks.lecture_ladder import spread

    assert spread([2.0]) == "2.0000" and spread([2.0, 2.1, 2.05]) == "2.0500 ± 0.0500"
