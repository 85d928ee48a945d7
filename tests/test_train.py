"""The training CLI end to end, on a tiny corpus and model, through `src.train.main` and real subprocesses."""

import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.checkpoints.checkpoint import load_checkpoint, model_from_checkpoint
from src.train import main
from tests.helpers import MODEL_OPTIONS, REPO, run_cli, tiny_args, with_callback

pytestmark = pytest.mark.slow  # end to end: trains, or launches processes


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_fit_writes_checkpoints_and_tensorboard(workdir, tiny_corpus, capsys):
    main(["fit", *tiny_args(tiny_corpus)])
    run = workdir / "lightning_logs" / "t"
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(name.startswith("best-") for name in ckpts)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # plain data only
    assert ckpt["global_step"] == 20
    tags = scalars(run)
    for tag in ("train_loss", "val_loss", "val_bpc", "tokens_per_sec"):
        assert tag in tags, tag
    assert any(tag.startswith("lr-MuonAdamW") for tag in tags)  # the default config trains with Muon
    assert len(tags["val_loss"]) == 2  # at steps 10 and 20 (Lightning files them under the step before)
    assert tags["val_bpc"][-1][1] == pytest.approx(tags["val_loss"][-1][1] / 0.6931471805599453, rel=1e-5)
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert "sample/text_summary" in acc.Tags()["tensors"]
    assert "--- sample at step 10 ---" in capsys.readouterr().out
    assert (run / "config.yaml").exists()


def test_resume_continues_steps_and_curves(workdir, tiny_corpus):
    main(["fit", *tiny_args(tiny_corpus, max_steps=20)])
    main(["fit", *tiny_args(tiny_corpus, max_steps=30), "--ckpt_path=last"])
    run = workdir / "lightning_logs" / "t"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    steps = [step for step, _ in scalars(run)["val_loss"]]
    assert len(steps) == 3 and steps == sorted(steps) and steps[-1] >= 29  # one run, one curve, no restart at 0


def test_a_fit_ends_with_its_result_where_its_files_are_and_what_to_run_next(workdir, tiny_corpus, capfd, caplog):
    """The last evaluation comes after the last progress line: the summary is where a user reads the result. Its
    best value is the best of the whole run, resumed or not."""
    main(["fit", *tiny_args(tiny_corpus, max_steps=20, **{"trainer.val_check_interval": 10})])
    main(["fit", *tiny_args(tiny_corpus, max_steps=30, **{"trainer.val_check_interval": 10}), "--ckpt_path=last"])
    out, _ = capfd.readouterr()
    lightning = [record.getMessage() for record in caplog.records]
    assert not [m for m in lightning if "Tip:" in m]  # Lightning's advert for its cloud logger
    assert [m for m in lightning if m.startswith("GPU available")]  # its device lines stay
    summary = out[out.rindex("chargpt: fit finished") :].splitlines()
    assert summary[0].startswith("chargpt: fit finished at step 30 after 0:0")
    # TensorBoard files each evaluation under the step before it (Lightning's), the summary under the step count
    val = {step + 1: loss for step, loss in scalars(workdir / "lightning_logs" / "t")["val_loss"]}
    best_step = min(val, key=val.get)
    best = val[best_step]
    assert summary[1] == f"  best val   {best:.4f} ({best / math.log(2):.4f} bpc) at step {best_step}"
    assert summary[2].startswith(f"  final val  {val[30]:.4f} (") and summary[2].endswith("at step 30")
    paths = {line.split()[0]: line.split()[1] for line in summary[3:5]}
    assert paths["last"] == "lightning_logs/t/checkpoints/last.ckpt" and Path(paths["best"]).is_file()
    assert f"best-step={best_step}-val_loss={best:.4f}" in paths["best"]
    commands = {line.split()[0]: line.split(maxsplit=1)[1] for line in summary[5:]}
    assert commands["resume"].startswith("python -m src.train fit ") and commands["resume"].endswith("--ckpt_path last")
    assert commands["sample"] == "python -m src.generate --ckpt_path lightning_logs/t/checkpoints/last.ckpt"
    assert commands["watch"] == "tensorboard --logdir lightning_logs"


def final_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    "optimizer, lr_schedule, precision, spikes",
    [
        ("adamw", "cosine", "32-true", False),
        ("muon", "cosine", "32-true", False),
        ("muon", "linear", "32-true", False),
        ("muon", "cosine", "bf16-mixed", False),
        # a window so short that it skips healthy steps too: the resumed half must skip the same ones
        ("muon", "cosine", "32-true", True),
    ],  # bf16-mixed: the default config's precision on an AVX-512 BF16 CPU
)
def test_stop_and_resume_equals_uninterrupted(workdir, tiny_corpus, optimizer, lr_schedule, precision, spikes):
    # the same schedule whether or not the run is stopped
    schedule = ["--model.lr_decay_steps=40", f"--model.optimizer={optimizer}", f"--model.lr_schedule={lr_schedule}"]
    schedule.append(f"--trainer.precision={precision}")
    if spikes:
        schedule += ["--divergence.skip_spikes=true", "--divergence.window=8", "--divergence.sigma=1"]
    main(["fit", *tiny_args(tiny_corpus, max_steps=40, run_name="whole"), *schedule])
    main(["fit", *tiny_args(tiny_corpus, max_steps=20, run_name="parts"), *schedule])
    main(["fit", *tiny_args(tiny_corpus, max_steps=40, run_name="parts"), *schedule, "--ckpt_path=last"])
    whole = final_weights(workdir / "lightning_logs/whole/checkpoints/last.ckpt")
    parts = final_weights(workdir / "lightning_logs/parts/checkpoints/last.ckpt")
    saved = torch.load(workdir / "lightning_logs/parts/checkpoints/last.ckpt", weights_only=True)
    decay = saved["lr_schedulers"][0]["_schedulers"][1]  # after the warmup: the flag's shape was the one that ran
    assert ("T_max" in decay) == (lr_schedule == "cosine") and ("end_factor" in decay) == (lr_schedule == "linear")
    assert whole.keys() == parts.keys()
    for key in whole:
        assert torch.equal(whole[key], parts[key]), key
    if spikes:  # the window, saved in the checkpoint, crossed the stop: the same steps were skipped
        guards = [
            torch.load(workdir / f"lightning_logs/{run}/checkpoints/last.ckpt", weights_only=True)["callbacks"]
            for run in ("whole", "parts")
        ]
        skipped = [next(v["skipped"] for k, v in g.items() if k.startswith("DivergenceGuard")) for g in guards]
        assert skipped[0] == skipped[1] > 0


@pytest.mark.parametrize(
    "n_embd, native, expected", [(128, True, "bf16-mixed"), (16, True, "32-true"), (128, False, "32-true")]
)
def test_a_cpu_run_takes_bf16_mixed_where_it_pays(workdir, tiny_corpus, monkeypatch, n_embd, native, expected):
    """No --trainer.precision on a CPU: bf16-mixed for models 128 wide and more on CPUs with native bf16."""
    monkeypatch.setattr("src.hardware.cpu_has_bf16", lambda: native)
    main(["fit", *tiny_args(tiny_corpus, max_steps=2), f"--model.n_embd={n_embd}", "--trainer.accelerator=cpu"])
    config = yaml.safe_load((workdir / "lightning_logs/t/config.yaml").read_text())
    assert config["trainer"]["precision"] == expected


def test_validate_reports_the_checkpoint_loss(workdir, tiny_corpus, capsys):
    main(["fit", *tiny_args(tiny_corpus)])
    best = next((workdir / "lightning_logs/t/checkpoints").glob("best-*.ckpt"))
    capsys.readouterr()
    main(["validate", *tiny_args(tiny_corpus), f"--ckpt_path={best}"])
    out = capsys.readouterr().out
    reported = {name: float(value) for name, value in re.findall(r"(val_loss|val_bpc)[\s│|]+([\d.]+)", out)}
    expected = float(best.stem.split("val_loss=")[1])  # the name rounds it to 4 decimals
    assert abs(reported["val_loss"] - expected) <= 5e-5
    assert abs(reported["val_bpc"] - reported["val_loss"] / math.log(2)) <= 1e-5


def test_print_config_round_trips(workdir, tiny_corpus, capsys):
    with pytest.raises(SystemExit):
        main(["fit", *tiny_args(tiny_corpus), "--print_config"])
    printed = capsys.readouterr().out
    (workdir / "run.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config=run.yaml", "--print_config"])
    assert capsys.readouterr().out == printed
    assert "max_steps: 20" in printed and "n_embd: 16" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model.n_layrs=3"], "n_layrs"),
        (["--trainer.max_steps=many"], "max_steps"),
        (["--model.n_embd=31"], "n_embd (31) must be divisible by n_head (2)"),
        (["--trainer.max_steps=0"], "--trainer.max_steps must be a positive number of steps, got 0"),
        (["--ckpt_path=nowhere.ckpt"], "checkpoint nowhere.ckpt does not exist"),
        (["--data.path=missing.txt"], "corpus file missing.txt does not exist"),
    ],
)
def test_bad_inputs_stop_before_training(workdir, tiny_corpus, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args(tiny_corpus), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (workdir / "lightning_logs" / "t" / "checkpoints").exists()


def test_foreign_checkpoint_is_refused(workdir, tiny_corpus, capsys):
    torch.save({"state_dict": {}}, workdir / "other.ckpt")
    with pytest.raises(SystemExit):
        main(["fit", *tiny_args(tiny_corpus), "--ckpt_path=other.ckpt"])
    assert "is not a chargpt checkpoint" in capsys.readouterr().err


def test_new_fit_never_overwrites_a_run(workdir, tiny_corpus, capsys):
    main(["fit", *tiny_args(tiny_corpus, max_steps=10)])
    with pytest.raises(SystemExit):
        main(["fit", *tiny_args(tiny_corpus, max_steps=10)])
    assert "already has" in capsys.readouterr().err


def test_sigkill_never_leaves_a_broken_last_checkpoint(workdir, tiny_corpus):
    rng = random.Random(0)
    args = tiny_args(tiny_corpus, max_steps=100_000, **{"model.n_embd": 64, "last_checkpoint.every_n_minutes": 0})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    last = workdir / "lightning_logs" / "t" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.train", "fit", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not last.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert last.exists(), "training never wrote last.ckpt"
        time.sleep(rng.uniform(0.2, 1.0))  # somewhere in the middle of a save, quite likely
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = load_checkpoint(last)  # weights_only load of the file the killed run left
    model_from_checkpoint(ckpt)
    assert ckpt["global_step"] >= 1


def test_two_process_ddp_on_cpu(workdir, tiny_corpus):
    args = tiny_args(tiny_corpus, **{"trainer.devices": 2, "trainer.strategy": "ddp", "sample.every_n_steps": 10})
    result = run_cli("fit", *args, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("--- sample at step 10 ---") == 1  # rank 0 only
    ckpt = torch.load(workdir / "lightning_logs/t/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 20
    assert len(scalars(workdir / "lightning_logs" / "t")["val_loss"]) == 2


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={config}", "--print_config"])
    assert exit_info.value.code in (0, None)
    assert f"run_name: {config.stem}" in capsys.readouterr().out


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "--model.n_layer N_LAYER transformer blocks",
        "--data.path PATH a UTF-8 text file",
        "--sample.prompt PROMPT the text each sample continues",
        "--run_name RUN_NAME the run's folder",
    ):
        assert text in out, text


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_mixed_precision_fit_with_gradient_clipping(workdir, tiny_corpus, optimizer):
    """bf16-mixed is the default on recent GPUs; Lightning refuses to clip gradients of a fused AdamW under it.
    (16-mixed, with loss scaling, needs CUDA: on a CPU Lightning runs bf16-mixed instead; tests/test_gpu.py.)"""
    extra = ["--trainer.precision=bf16-mixed", f"--model.optimizer={optimizer}"]
    main(["fit", *tiny_args(tiny_corpus, max_steps=4), *extra])
    ckpt = torch.load(workdir / "lightning_logs/t/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(w).all() for w in ckpt["state_dict"].values() if w.is_floating_point())


def test_resuming_on_another_vocabulary_is_refused(workdir, tiny_corpus, capsys):
    main(["fit", *tiny_args(tiny_corpus, max_steps=10)])
    other = workdir / "other.txt"
    other.write_text(tiny_corpus.read_text() + "Zounds! Quoth Xavier.\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args(other, max_steps=20), "--ckpt_path=last"])
    assert exit_info.value.code == 2
    assert "trained on a vocabulary of" in capsys.readouterr().err


def direct_bits_per_character(ckpt: Path, ids: list[int], context: Callable[[int], int]) -> tuple[float, int]:
    """Each prediction p (ids[p + 1] from what precedes it) scored alone, with ids[context(p) : p + 1] as context."""
    model, _ = model_from_checkpoint(load_checkpoint(ckpt))
    nll = 0.0
    for p in range(len(ids) - 1):
        window = torch.tensor([ids[context(p) : p + 1]])
        logits, _ = model(window, torch.zeros_like(window))
        nll -= torch.log_softmax(logits[0, -1].double(), -1)[ids[p + 1]].item()
    return nll / (len(ids) - 1) / math.log(2), len(ids) - 1


@pytest.mark.parametrize("stride", [1, 16], ids=["sliding, full context", "non-overlapping"])
def test_test_scores_every_validation_character_once(ckpt, workdir, tiny_corpus, stride):
    main(["test", *tiny_args(tiny_corpus), f"--ckpt_path={ckpt}", f"--data.test_stride={stride}"])
    tags = scalars(workdir / "lightning_logs/t/test")
    text = tiny_corpus.read_text()
    vocab = load_checkpoint(ckpt)["hyper_parameters"]["vocab"]
    ids = [vocab.index(ch) for ch in text[int(0.9 * len(text)) :]]
    context = (lambda p: max(0, p + 1 - 16)) if stride == 1 else (lambda p: p // 16 * 16)
    bpc, chars = direct_bits_per_character(ckpt, ids, context)
    assert tags["test_chars"][-1][1] == chars
    assert tags["test_bpc"][-1][1] == pytest.approx(bpc, rel=1e-5)
    assert tags["test_loss"][-1][1] == pytest.approx(bpc * math.log(2), rel=1e-5)


def test_test_path_scores_another_text_in_the_models_characters(ckpt, workdir, tiny_corpus, capsys):
    vocab = load_checkpoint(ckpt)["hyper_parameters"]["vocab"]
    other = workdir / "other.txt"  # fewer characters than the model's vocabulary: its ids are translated
    other.write_text("we speak, hear me.\nall speak further.\n" * 3)
    args = [*tiny_args(tiny_corpus), f"--ckpt_path={ckpt}", "--data.test_stride=16"]
    main(["test", *args, f"--data.test_path={other}"])
    tags = scalars(workdir / "lightning_logs/t/test")
    bpc, chars = direct_bits_per_character(ckpt, [vocab.index(ch) for ch in other.read_text()], lambda p: p // 16 * 16)
    assert tags["test_chars"][-1][1] == chars
    assert tags["test_bpc"][-1][1] == pytest.approx(bpc, rel=1e-5)
    (workdir / "bad.txt").write_text("Zounds, speak!\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *args, f"--data.test_path={workdir / 'bad.txt'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "2 character(s) outside the model's vocabulary: '!Z'" in err and "Traceback" not in err
    (workdir / "latin1.txt").write_bytes("speak, caf\xe9\n".encode("latin-1"))
    (workdir / "one.txt").write_text("a")
    for name, message in (("latin1.txt", "not UTF-8"), ("one.txt", "has no text to score"), ("none.txt", "not exist")):
        with pytest.raises(SystemExit) as exit_info:
            main(["test", *args, f"--data.test_path={workdir / name}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "--data.test_path" in err and "--data.path" not in err


def test_bf16_true_scores_match_32_bit(ckpt, workdir, tiny_corpus):
    """bf16-true converts the module, metrics included: their sums must still be kept in float32."""
    scores = {}
    for precision in ("32-true", "bf16-true"):
        main(["test", *tiny_args(tiny_corpus), f"--ckpt_path={ckpt}", f"--trainer.precision={precision}"])
        logs = workdir / "lightning_logs/t/test"
        scores[precision] = {tag: values[-1][1] for tag, values in scalars(logs).items()}
        shutil.rmtree(logs)
    assert scores["bf16-true"]["test_chars"] == scores["32-true"]["test_chars"]
    assert scores["bf16-true"]["test_loss"] == pytest.approx(scores["32-true"]["test_loss"], rel=0.01)


def test_test_and_predict_never_traceback(workdir, tiny_corpus, capsys):
    for args, message in (
        (["test", *tiny_args(tiny_corpus)], "test scores a trained model: pass --ckpt_path"),
        (["predict", *tiny_args(tiny_corpus)], "invalid choice: 'predict'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_default_root_dir_moves_every_output_and_evaluations_leave_the_run_alone(workdir, tiny_corpus):
    root = ["--trainer.default_root_dir=runs"]
    main(["fit", *tiny_args(tiny_corpus), *root])
    run = workdir / "runs" / "t"
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "config.yaml").exists()
    assert list(run.glob("events.out.tfevents.*")) and not (workdir / "lightning_logs").exists()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for subcommand in ("validate", "test"):
        main([subcommand, *tiny_args(tiny_corpus), *root, "--ckpt_path=last"])
        assert (run / subcommand / "config.yaml").exists()
    assert {p: p.read_bytes() for p in before} == before  # the training run's files, untouched
    assert not (workdir / "lightning_logs").exists()


def test_a_val_loss_threshold_ends_fit_and_saves_last_checkpoint(workdir, tiny_corpus):
    """configs/speedrun_cpu.yaml stops at nanoGPT's loss with EarlyStopping(stopping_threshold=...)."""
    stop = "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping"
    threshold = ["--trainer.callbacks.monitor=val_loss", "--trainer.callbacks.stopping_threshold=100"]
    main(["fit", *tiny_args(tiny_corpus, max_steps=100), stop, *threshold])  # any loss is below 100
    ckpt = torch.load(workdir / "lightning_logs/t/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10  # the first validation, not max_steps
    assert len(scalars(workdir / "lightning_logs" / "t")["val_loss"]) == 1


def test_fit_without_a_config_is_the_default_config(workdir, capsys):
    """The code's defaults are the lecture's 10.8M model; the default run is configs/shakespeare_char.yaml."""
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    default = yaml.safe_load((REPO / "configs/shakespeare_char.yaml").read_text())
    assert config["run_name"] == default["run_name"] and config["model"]["n_embd"] == default["model"]["n_embd"]
    assert config["model"]["optimizer"] == "muon" and config["trainer"]["max_steps"] == default["trainer"]["max_steps"]
    with pytest.raises(SystemExit):
        main(["fit", "--model.n_layer=2", "--print_config"])  # flags still override it
    assert yaml.safe_load(capsys.readouterr().out)["model"]["n_layer"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--attention.enabled=false"], "attention is now called attention_maps; use --attention_maps.enabled"),
        (
            ["--data.strict", "true"],
            "--data.strict: data.strict is now called data.strict_utf8; use --data.strict_utf8",
        ),
    ],
)
def test_a_renamed_key_gets_its_new_name(workdir, tiny_corpus, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args(tiny_corpus), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    (workdir / "old.yaml").write_text("attention:\n  enabled: false\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(workdir / "old.yaml"), *tiny_args(tiny_corpus)])
    assert "old.yaml: the key attention is now called attention_maps" in capsys.readouterr().err


def test_each_callback_can_be_switched_off(workdir, tiny_corpus):
    off = {f"{name}.enabled": "false" for name in ("throughput", "run_summary", "embeddings", "lr_monitor", "sample")}
    main(["fit", *tiny_args(tiny_corpus, max_steps=10, **off)])
    acc = EventAccumulator(str(workdir / "lightning_logs/t"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert "val_loss" in scalars and not scalars & {"tokens_per_sec", "best_val_loss", "lr-MuonAdamW/decay"}
    assert not (workdir / "lightning_logs/t/projector_config.pbtxt").exists()


def test_the_csv_logger_gets_what_the_readme_says(workdir, tiny_corpus):
    """docs/training.md, Other loggers: the CSV logger writes lightning_logs/csv/version_N/metrics.csv with the losses,
    val_bpc, learning rates, tokens/s, MFU and gradient norm, and none of the TensorBoard-only best/final curves."""
    csv = ["--trainer.logger=CSVLogger", "--trainer.logger.save_dir=lightning_logs", "--trainer.logger.name=csv"]
    main(["fit", *tiny_args(tiny_corpus, max_steps=10, run_name="csv"), *csv])
    header = (workdir / "lightning_logs/csv/version_0/metrics.csv").read_text().splitlines()[0].split(",")
    expected = {"train_loss", "val_loss", "val_bpc", "tokens_per_sec", "mfu", "grad_norm", "lr-MuonAdamW/muon"}
    assert expected <= set(header) and "best_val_loss" not in header
    assert (workdir / "lightning_logs/csv/checkpoints/last.ckpt").exists()


EVERY_OPTION = [f"--model.{name}={str(value).lower()}" for name, value in MODEL_OPTIONS.items()]


def test_a_model_with_every_option_resumes_exactly_tests_exports_and_generates(workdir, tiny_corpus, capsys):
    from src.export import main as export_main
    from src.generate import main as generate_main

    options = ["--model.lr_decay_steps=40", "--model.n_layer=2", *EVERY_OPTION]
    options += ["--model.optimizer=muon", "--model.muon_momentum_warmup=30"]  # a momentum that moves with the step
    main(["fit", *tiny_args(tiny_corpus, max_steps=40, run_name="whole"), *options])
    main(["fit", *tiny_args(tiny_corpus, max_steps=20, run_name="parts"), *options])
    main(["fit", *tiny_args(tiny_corpus, max_steps=40, run_name="parts"), *options, "--ckpt_path=last"])
    ckpt = workdir / "lightning_logs/parts/checkpoints/last.ckpt"
    whole, parts = final_weights(workdir / "lightning_logs/whole/checkpoints/last.ckpt"), final_weights(ckpt)
    assert whole.keys() == parts.keys() and "model.transformer.wpe.weight" not in whole
    assert all(torch.equal(whole[key], parts[key]) for key in whole)
    capsys.readouterr()
    main(["test", *tiny_args(tiny_corpus, run_name="parts"), *options, "--ckpt_path=last"])
    assert "test_loss" in capsys.readouterr().out
    export_main([f"--ckpt_path={ckpt}", "--out=exported"])  # model.onnx included
    args = ["--prompt=All:", "--max_new_tokens=40", "--seed=3", "--num_samples=2"]
    capsys.readouterr()
    generate_main([f"--ckpt_path={ckpt}", *args])
    from_checkpoint = capsys.readouterr().out
    generate_main(["--ckpt_path=exported", *args])
    assert capsys.readouterr().out == from_checkpoint and len(from_checkpoint) > 80
    ort = pytest.importorskip("onnxruntime")
    from src.export import AllLogits

    model, tokenizer = model_from_checkpoint(load_checkpoint(ckpt))
    idx = torch.tensor([tokenizer.encode("All: speak.")])
    (logits,) = ort.InferenceSession(str(workdir / "exported/model.onnx")).run(None, {"idx": idx.numpy()})
    assert torch.allclose(torch.from_numpy(logits), AllLogits(model)(idx), atol=1e-4)


def test_muons_momentum_warms_up_with_the_step_and_only_muons(workdir, tiny_corpus):
    warmup = ["--model.optimizer=muon", "--model.muon_momentum_warmup=20"]
    main(["fit", *tiny_args(tiny_corpus, max_steps=10, run_name="warm"), *warmup])
    groups = torch.load(workdir / "lightning_logs/warm/checkpoints/last.ckpt", weights_only=True)["optimizer_states"]
    muon, adamw = groups[0]["muon"]["param_groups"], groups[0]["adamw"]["param_groups"]
    assert muon[0]["momentum"] == pytest.approx(0.85 + 0.10 * 9 / 20)  # set before the tenth step (global step 9)
    assert all("momentum" not in group for group in adamw)
    main(["fit", *tiny_args(tiny_corpus, max_steps=10, run_name="still"), "--model.optimizer=muon"])
    groups = torch.load(workdir / "lightning_logs/still/checkpoints/last.ckpt", weights_only=True)["optimizer_states"]
    assert groups[0]["muon"]["param_groups"][0]["momentum"] == 0.95  # torch's default, untouched


def test_muon_for_a_model_without_hidden_matrices_says_that_adamw_trains_it(workdir, tiny_corpus, capsys):
    main(["fit", *tiny_args(tiny_corpus, max_steps=2), "--model.model_type=bigram", "--model.optimizer=muon"])
    err = capsys.readouterr().err
    assert "chargpt: --model.optimizer muon: the bigram model has no hidden weight matrices for Muon, so AdamW" in err
    groups = torch.load(workdir / "lightning_logs/t/checkpoints/last.ckpt", weights_only=True)["optimizer_states"]
    assert "muon" not in groups[0]


EMA = ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay=0.9"]


def test_weight_averaging_evaluates_checkpoints_and_resumes_on_the_averaged_weights(workdir, tiny_corpus):
    """Lightning's EMAWeightAveraging, one config line: validation and checkpoints see the average, and a resumed run
    ends where an uninterrupted one does (the module builds its network before the callback copies it)."""
    schedule = ["--model.lr_decay_steps=40"]
    main(["fit", *tiny_args(tiny_corpus, max_steps=40, run_name="plain"), *schedule])
    main(["fit", *tiny_args(tiny_corpus, max_steps=40, run_name="whole"), *schedule, *EMA])
    main(["fit", *tiny_args(tiny_corpus, max_steps=20, run_name="parts"), *schedule, *EMA])
    main(["fit", *tiny_args(tiny_corpus, max_steps=40, run_name="parts"), *schedule, *EMA, "--ckpt_path=last"])
    plain, whole = (scalars(workdir / f"lightning_logs/{run}")["val_loss"] for run in ("plain", "whole"))
    assert [step for step, _ in plain] == [step for step, _ in whole] and plain != whole
    ckpt = torch.load(workdir / "lightning_logs/whole/checkpoints/last.ckpt", weights_only=True)
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == current.keys()
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged)
    parts = final_weights(workdir / "lightning_logs/parts/checkpoints/last.ckpt")
    assert all(torch.equal(averaged[key], parts[key]) for key in averaged)


@pytest.fixture
def small_disk(workdir):
    """A 32 MB tmpfs in the test's folder, or a skip where this machine cannot mount one (not root, a container)."""
    folder = workdir / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes_once_space_is_freed(workdir, tiny_corpus, small_disk):
    # the run's folder fills up after its first checkpoint: whatever hits the full disk first (the next
    # checkpoint, or TensorBoard's writer thread), one line says so, and last.ckpt stays whole
    args = tiny_args(tiny_corpus, 40, **{"trainer.default_root_dir": str(small_disk / "logs")})
    ballast = small_disk / "ballast"
    full = run_cli("fit", *args, with_callback("FillDisk", step=15, path=str(ballast)), cwd=workdir)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr and "Exception in thread" not in full.stderr
    said = [line for line in full.stderr.splitlines() if line.startswith("chargpt: error:")]
    assert len(said) == 1 and "No space left on device" in said[0] and "--ckpt_path last" in said[0]
    last = small_disk / "logs/t/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 10

    ballast.unlink()
    again = run_cli("fit", *args, "--ckpt_path=last", cwd=workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 40
