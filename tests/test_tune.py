"""python -m src.tune end to end on a tiny corpus and model: a study runs, writes best.yaml that trains to the best
trial's val, continues when run again; pruned, skipped and diverged trials are recorded as such; bad input gets one
line; and two workers share a study on a real PostgreSQL server."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from src.training.fit import fit
from src.tune import main
from src.tuning.space import Param
from src.tuning.study import StudySettings, run_study
from tests.helpers import REPO, poison, tiny_args

pytestmark = pytest.mark.slow
COMPLETE, PRUNED, FAIL = (optuna.trial.TrialState[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
RATE = "model.learning_rate: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"


def space(workdir: Path, text: str = RATE) -> str:
    path = workdir / "space.yaml"
    path.write_text(text)
    return str(path)


def load(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///lightning_logs/tune/{name}.db")


def test_a_study_writes_best_yaml_that_trains_to_its_val_and_a_rerun_continues(workdir, tiny_corpus, capsys):
    args = ["--space", space(workdir), "--trials", "3", "--study", "s", "--sampler_seed", "1"]
    main([*args, *tiny_args(tiny_corpus, max_steps=20)])
    out = capsys.readouterr()
    study = load("s")
    assert [t.state for t in study.trials] == [COMPLETE] * 3
    assert len({t.params["model.learning_rate"] for t in study.trials}) == 3
    assert re.search(r"trial 2 \(3 of 3\) complete: val \d\.\d{4}; best \d\.\d{4} \(trial \d\); ETA", out.out)
    assert "| trial | model.learning_rate | best val | steps | wall | state |" in out.out
    assert (workdir / "lightning_logs/tune/s/trial_0/events.out.tfevents.").parent.is_dir()
    best = study.best_trial
    assert best.user_attrs["steps"] == 20
    again = fit(["--config", "lightning_logs/tune/s/best.yaml"])  # the best trial's run, again, as a plain fit
    assert again.best_val == best.value and again.run_dir == Path("lightning_logs/s_best")
    main([*args[:2], "--trials", "1", *args[4:], *tiny_args(tiny_corpus, max_steps=20)])
    assert [t.number for t in load("s").trials] == [0, 1, 2, 3]  # the same study, one more trial


def test_skipped_pruned_and_diverged_trials_are_recorded_as_such(workdir, tiny_corpus):
    heads = [Param("model.n_head", "categorical", choices=(3, 2))]  # 3 does not divide the width, 16
    settings = StudySettings("p", heads, tiny_args(tiny_corpus, max_steps=20), Path("lightning_logs"), sampler="grid")
    study = run_study(settings, 2, say=lambda line: None, pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    by_heads = {t.params["model.n_head"]: t for t in study.trials}
    assert by_heads[3].state == PRUNED and "skipped: " in by_heads[3].user_attrs["reason"]
    assert "n_embd (16) must be divisible by n_head (3)" in by_heads[3].user_attrs["reason"]
    first = by_heads[2].intermediate_values[1]  # reported as the first evaluation, at step 10
    assert by_heads[2].state == PRUNED and by_heads[2].user_attrs["reason"] == (
        f"pruned at evaluation 1, step 10 (val {first:.4f})"
    )
    rate = [Param("model.learning_rate", "categorical", choices=(0.01,))]
    nan = StudySettings("n", rate, [*tiny_args(tiny_corpus), poison(5, math.nan)], Path("lightning_logs"))
    trial = run_study(nan, 1, say=lambda line: None).trials[0]  # failed, and the study goes on: no exception
    assert trial.state == FAIL and trial.user_attrs["reason"].startswith("diverged: training diverged at step 6")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--storage", "nowhere"], "--storage nowhere: not a database URL: sqlite:///path.db, or postgresql"),
        (["--storage", "mysql://u@127.0.0.1/db"], "its database driver is not installed"),
        (["--model.n_layers=2"], "n_layers"),  # a fit flag fit does not take: refused before any trial
    ],
)
def test_bad_input_is_one_line_before_any_trial(workdir, tiny_corpus, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        main(["--space", space(workdir), "--trials", "1", *flags, *tiny_args(tiny_corpus)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(workdir.glob("lightning_logs/tune/*/trial_*"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_program(name: str) -> str | None:
    """On the PATH, or where Debian's postgresql package puts it (/usr/lib/postgresql/<version>/bin), the newest."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return shutil.which(name) or (str(found[-1]) if found else None)


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1, run as the postgres user when the tests run as root (the server
    refuses root); skipped, with the reason, where one cannot start."""
    initdb, pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server (initdb, pg_ctl) on this machine: apt-get install postgresql")
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[tune]'")
    folder = Path(tempfile.mkdtemp(prefix="chargpt-pg-"))  # not under pytest's root-only folder
    as_postgres = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(folder, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port, data = free_port(), str(folder / "data")
    start = [
        [*as_postgres, initdb, "-D", data, "-U", "postgres", "--auth=trust"],
        [*as_postgres, pg_ctl, "-D", data, "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "-l", f"{folder}/log", "-w",
         "start"],
    ]  # fmt: skip
    try:
        for command in start:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(
                    f"PostgreSQL could not start ({Path(command[len(as_postgres)]).name}): {done.stderr[-300:]}"
                )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_a_study_on_postgresql(workdir, tiny_corpus, postgres):
    args = ["--space", space(workdir), "--trials", "2", "--study", "shared", "--storage", postgres]
    command = [sys.executable, "-m", "src.tune", *args, *tiny_args(tiny_corpus, max_steps=20)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]  # fmt: skip
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    study = optuna.load_study(study_name="shared", storage=postgres)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # no trial twice, each worker ran two
    assert all(t.state == COMPLETE for t in study.trials)
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == 4
    # each worker's summary shows the study's best as it stood when that worker finished: the last to finish, the
    # final best, and the other no better than it
    seen = [float(re.search(r"best: trial \d+, val (\S+),", out)[1]) for out, _ in outputs]
    assert min(seen) == round(study.best_value, 4) and max(seen) >= min(seen)


def test_ctrl_c_fails_the_running_trial_prints_the_table_and_the_command_that_continues(workdir, tiny_corpus):
    args = ["--space", space(workdir), "--trials", "50", "--study", "c", *tiny_args(tiny_corpus, max_steps=400)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "src.tune", *args], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    saved = workdir / "lightning_logs/tune/c/trial_1/checkpoints/last.ckpt"  # trial 1 is under way
    deadline = time.monotonic() + 120
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and f"Continue: python -m src.tune {' '.join(args[:2])}" in err
    assert "| trial | model.learning_rate |" in out
    states = [t.state for t in load("c").trials]
    assert states == [COMPLETE, FAIL]  # the one it was running is failed, not left running
