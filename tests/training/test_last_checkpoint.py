"""Never lose training: last.ckpt follows training, signals save and exit with their status, writes are atomic."""

import itertools
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.checkpoints.checkpoint import load_checkpoint
from src.train import main
from src.training import last_checkpoint
from src.training.cli import resume_command
from tests.helpers import REPO, tiny_args

pytestmark = pytest.mark.slow  # end to end: trains, or launches processes


def step_of(path: Path) -> int:
    return load_checkpoint(path)["global_step"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def start(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "src.train", "fit", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_line(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"training ended before printing {text!r}: {proc.stderr.read()[-3000:]}")


def test_last_checkpoint_follows_training_after_val_loss_stops_improving(workdir, shakespeare):
    """The issue's scenario: a small corpus at a high constant rate overfits early; last.ckpt used to stay there."""
    corpus = workdir / "small.txt"
    corpus.write_text(shakespeare.read_text()[:3000])
    sizes = {"data.block_size": 32, "data.batch_size": 16, "model.n_layer": 2, "model.n_head": 4, "model.n_embd": 64}
    rate = {"model.learning_rate": 1e-2, "model.min_lr": 1e-2, "model.warmup_steps": 100, "model.dropout": 0.0}
    schedule = {"trainer.val_check_interval": 50, "sample.every_n_steps": 0}
    main(["fit", *tiny_args(corpus, max_steps=330, **sizes, **rate, **schedule)])
    checkpoints = workdir / "lightning_logs/t/checkpoints"
    best = next(checkpoints.glob("best-*.ckpt"))
    assert step_of(best) < 300  # the scenario holds: the best validation is not the last one (at step 300)
    assert step_of(checkpoints / "last.ckpt") == 330  # the end of fit, between two validations


@pytest.mark.parametrize("minutes, steps", [(3, [3, 6, 9, 12, 15, 18, 20]), ("null", [20])], ids=["every 3", "null"])
def test_last_checkpoint_is_written_after_the_step_that_closes_each_interval(
    workdir, tiny_corpus, monkeypatch, minutes, steps
):
    """The README's promise that a kill -9 loses at most --last_checkpoint.every_n_minutes of training. The clock
    is faked: each reading is one minute after the one before (a save reads it too)."""
    readings = itertools.count()
    monkeypatch.setattr(last_checkpoint, "monotonic", lambda: 60.0 * next(readings))
    written = []
    write = last_checkpoint.save_atomically
    monkeypatch.setattr(
        last_checkpoint,
        "save_atomically",
        lambda checkpoint, path: (
            written.append((Path(path).name, checkpoint["global_step"])),
            write(checkpoint, path),
        ),
    )
    schedule = {"trainer.val_check_interval": 20, "sample.every_n_steps": 0, "last_checkpoint.every_n_minutes": minutes}
    main(["fit", *tiny_args(tiny_corpus, max_steps=20, **schedule)])
    assert [step for name, step in written if name == "last.ckpt"] == steps
    assert step_of(workdir / "lightning_logs/t/checkpoints/last.ckpt") == 20


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_step_reached_and_exits_with_its_status(workdir, tiny_corpus, signum, status):
    no_validation = {"trainer.val_check_interval": 100_000, "sample.every_n_steps": 20, "model.n_embd": 64}
    proc = start(tiny_args(tiny_corpus, max_steps=100_000, **no_validation), workdir)
    wait_for_line(proc, "--- sample at step 40 ---")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-3000:]
    last = workdir / "lightning_logs/t/checkpoints/last.ckpt"
    step = step_of(last)
    assert 40 <= step < 100_000  # where training was, with no validation ever run
    lines = [line for line in err.splitlines() if line.startswith(f"chargpt: {signum.name}")]
    assert len(lines) == 1 and f"{signum.name}: saved {last.relative_to(workdir)} at step {step}" in lines[0]
    assert "--ckpt_path last" in lines[0] and "Traceback" not in err
    # the run's summary on stdout says how it ended, and what comes next
    summary = out[out.index("chargpt: fit stopped") :]
    assert summary.startswith(f"chargpt: fit stopped by {signum.name} at step {step} after ")
    assert "no evaluation yet" in summary and f"last       {last.relative_to(workdir)}" in summary
    assert "resume" in summary and "--ckpt_path last" in summary


def test_resume_after_sigterm_equals_the_uninterrupted_run(workdir, tiny_corpus):
    args = {"model.lr_decay_steps": 400, "sample.every_n_steps": 20, "trainer.val_check_interval": 100}
    main(["fit", *tiny_args(tiny_corpus, max_steps=400, run_name="whole", **args)])
    proc = start(tiny_args(tiny_corpus, max_steps=400, run_name="parts", **args), workdir)
    wait_for_line(proc, "--- sample at step 20 ---")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    parts = workdir / "lightning_logs/parts/checkpoints/last.ckpt"
    assert 20 <= step_of(parts) < 400
    main(["fit", *tiny_args(tiny_corpus, max_steps=400, run_name="parts", **args), "--ckpt_path=last"])
    whole = weights(workdir / "lightning_logs/whole/checkpoints/last.ckpt")
    resumed = weights(parts)
    assert step_of(parts) == 400 and whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_a_second_ctrl_c_stops_at_once_and_never_corrupts_last_checkpoint(workdir, tiny_corpus):
    args = {"last_checkpoint.every_n_minutes": 0, "sample.every_n_steps": 20, "model.n_embd": 64}
    proc = start(tiny_args(tiny_corpus, max_steps=100_000, **args), workdir)
    wait_for_line(proc, "--- sample at step 40 ---")  # last.ckpt is rewritten after every step from now on
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    checkpoints = workdir / "lightning_logs/t/checkpoints"
    assert step_of(checkpoints / "last.ckpt") >= 40  # whole, whichever write the second signal cut
    assert not list(checkpoints.glob(".*.tmp"))
    assert "Traceback" not in err


def test_ckpt_path_last_starts_a_new_run_from_step_zero(workdir, tiny_corpus, capsys):
    main(["fit", *tiny_args(tiny_corpus, max_steps=10), "--ckpt_path=last"])
    assert "no lightning_logs/t/checkpoints/last.ckpt yet: starting run 't' from step 0" in capsys.readouterr().err
    assert step_of(workdir / "lightning_logs/t/checkpoints/last.ckpt") == 10
    main(["fit", *tiny_args(tiny_corpus, max_steps=20), "--ckpt_path=last"])  # the same command resumes
    assert step_of(workdir / "lightning_logs/t/checkpoints/last.ckpt") == 20


def test_signal_handlers_are_restored_after_fit(workdir, tiny_corpus):
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    main(["fit", *tiny_args(tiny_corpus, max_steps=5)])
    assert {signum: signal.getsignal(signum) for signum in before} == before


def read_only(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` is read-only, even for root (whom file modes do not stop)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    mount = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder}"
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "sh", "-c", mount]).returncode:
        pytest.skip("root here cannot make a read-only folder (no unshare -rm with mount rights)")
    return ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$0" "$@"']


def small_disk() -> None:
    """In the child: files may not grow past 64 KiB, as on a full disk (the checkpoint is ~600 KiB)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.parametrize("failure", ["read-only folder", "full disk"])
def test_a_failed_write_names_the_path_and_keeps_the_previous_checkpoint(workdir, tiny_corpus, failure):
    args = tiny_args(tiny_corpus, max_steps=10, **{"model.n_embd": 64})
    main(["fit", *args])
    checkpoints = workdir / "lightning_logs/t/checkpoints"
    last = checkpoints / "last.ckpt"
    before = last.read_bytes()
    prefix = read_only(checkpoints) if failure == "read-only folder" else []
    cmd = [
        *prefix,
        sys.executable,
        "-m",
        "src.train",
        "fit",
        *tiny_args(tiny_corpus, max_steps=20, **{"model.n_embd": 64}),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    preexec = small_disk if failure == "full disk" else None
    done = subprocess.run(
        [*cmd, "--ckpt_path=last"], cwd=workdir, env=env, capture_output=True, text=True, preexec_fn=preexec
    )
    checkpoints.chmod(0o755)
    assert done.returncode == 2, done.stderr[-3000:]
    reason = "Read-only file system" if failure == "read-only folder" else "File too large"
    assert f"could not write checkpoint {checkpoints}/" in done.stderr and reason in done.stderr
    assert f"make {checkpoints} writable" in done.stderr and "Traceback" not in done.stderr
    assert last.read_bytes() == before and step_of(last) == 10
    assert not list(checkpoints.glob(".*.tmp"))


def test_under_ddp_a_signal_to_one_rank_stops_every_rank_and_rank_zero_saves(workdir, tiny_corpus):
    ddp = {"trainer.devices": 2, "trainer.strategy": "ddp", "trainer.val_check_interval": 100_000}
    proc = start(tiny_args(tiny_corpus, max_steps=100_000, **ddp, **{"sample.every_n_steps": 20}), workdir)
    wait_for_line(proc, "--- sample at step 40 ---")
    proc.send_signal(signal.SIGTERM)  # to rank 0 only, as `kill PID` does; the other rank learns it at its next step
    _, err = proc.communicate(timeout=120)  # returns once every rank has closed the pipes they share
    assert proc.returncode == 143, err[-3000:]
    assert step_of(workdir / "lightning_logs/t/checkpoints/last.ckpt") >= 40
    assert len([line for line in err.splitlines() if line.startswith("chargpt: SIGTERM: saved")]) == 1


def test_under_ddp_a_failed_write_stops_every_rank_with_one_message(workdir, tiny_corpus):
    ddp = {"trainer.devices": 2, "trainer.strategy": "ddp", "model.n_embd": 64, "attention_maps.enabled": "false"}
    args = tiny_args(tiny_corpus, max_steps=20, **ddp, **{"sample.every_n_steps": 0})
    proc = start(args, workdir, preexec_fn=small_disk)  # every rank inherits the limit; rank 0 writes
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, err[-3000:]
    assert len([line for line in err.splitlines() if "could not write checkpoint" in line]) == 1, err[-3000:]
    assert "File too large" in err and "Traceback" not in err


def test_an_unreadable_checkpoint_names_the_readable_ones_and_the_command(workdir, tiny_corpus, capsys):
    args = tiny_args(tiny_corpus, max_steps=20)
    main(["fit", *args])
    checkpoints = workdir / "lightning_logs/t/checkpoints"
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # an interrupted copy
    best = next(checkpoints.glob("best-*.ckpt"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--ckpt_path=last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{last.relative_to(workdir)} is not a readable checkpoint" in err
    assert f"Readable checkpoints: {best.name} (step {step_of(best)})" in err
    command = resume_command(["fit", *args], str(best.relative_to(workdir)))
    assert f"To go on from the newest: {command}" in err
    with pytest.raises(SystemExit):  # the run's folder spelled another way: each checkpoint still listed once
        main(["fit", *args, f"--ckpt_path={last}"])
    assert capsys.readouterr().err.count(f"{best.name} (step") == 1
