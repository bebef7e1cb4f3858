"""Commands started from the preloaded server (irpe_bench/preloaded.py) are processes of their own: exit code,
session, working directory, environment and streams as given, a killing signal as a negative return code, and
none of the command's arguments on a command line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from irpe_bench import preloaded

from ._train_helpers import tiny_dict, write_yaml


def test_a_bad_command_answers_with_its_exit_code_and_one_line_on_its_stderr(tmp_path):
    proc = preloaded.start(["nosuchcommand"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and out == ""
    assert "invalid choice: 'nosuchcommand'" in err and "Traceback" not in err
    merged = tmp_path / "merged.log"
    with merged.open("w") as f:
        proc = preloaded.start(["describe", "--help"], stdout=f, stderr=subprocess.STDOUT)
        assert proc.wait(timeout=120) == 0
    assert merged.read_text().startswith("usage: irpe-bench describe")
    # the environment given is the command's own (a bad allocator policy fails before any work, named)
    proc = preloaded.start(["describe", "deit_tiny_patch16_224"], env={**os.environ, "IRPE_BENCH_MALLOC": "bogus"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "IRPE_BENCH_MALLOC='bogus'" in err, err


@pytest.mark.slow
def test_a_started_run_has_its_own_session_and_cwd_and_dies_by_its_signal(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path, trainer={"max_epochs": 1000}))
    cwd = tmp_path / "here"
    cwd.mkdir()
    log = tmp_path / "train.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = preloaded.start(["train", str(config), "--run-dir", str(tmp_path / "run")], env=env, cwd=cwd,
                           stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)  # Ctrl-C in the starter's terminal misses it
        assert Path(f"/proc/{proc.pid}/cwd").resolve() == cwd.resolve()
        assert str(config).encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL and proc.returncode == -signal.SIGKILL
    finally:
        proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_started_run_trains_on_the_threads_its_environment_gives(tmp_path, threads):
    """torch sized its pool when the server imported it, from the server's environment; each started process
    takes its own ``OMP_NUM_THREADS`` (a launcher's share of the cores per worker), as a fresh interpreter would."""
    from irpe_bench import keys as K

    config = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path, trainer={"max_epochs": 1, "benchmark_batches": 0}))
    proc = preloaded.start(["train", str(config), "--run-dir", str(tmp_path / "run")],
                           env={**os.environ, "OMP_NUM_THREADS": threads}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert f" {threads} threads," in summary[K.DEVICE], summary[K.DEVICE]


_MARKER = """import os, pathlib
pathlib.Path(os.path.dirname(__file__), f"loaded-by-{os.getpid()}").touch()
"""


@pytest.mark.slow
@pytest.mark.parametrize("start_up", ["same", "another PYTHONPATH"])
def test_a_started_launcher_forks_its_workers_from_its_own_server_unless_its_start_up_differs(tmp_path, start_up):
    """A sweep launcher that was itself forked from the server starts its workers from that server: no second
    import of torch, timm and Lightning. Given a ``PYTHONPATH`` the server did not have, it starts a server of its
    own, which imports what a fresh interpreter with that path would (here a ``sitecustomize`` that leaves a mark
    with its pid), and the workers are that server's children."""
    import multiprocessing.forkserver

    import optuna

    from ._processes import parents, start

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_MARKER)
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer={
        "max_epochs": 1, "benchmark_batches": 0, "limit_train_batches": 1, "limit_val_batches": 1,
        "limit_test_batches": 1}))
    write_yaml(tmp_path / "sweep.yaml", {"study": {"name": "s", "sampler": "grid", "pruner": "none"},
                                         "base": "base.yaml", "space": {"seed": {"choices": [0, 1]}},
                                         "out_dir": str(tmp_path / "out"), "workers": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"PYTHONPATH": str(site)} if start_up != "same" else {})}
    env.pop("PYTHONPATH", None) if start_up == "same" else None
    proc = start(["sweep", str(tmp_path / "sweep.yaml"), "--no-leaderboard"], env=env, cwd=tmp_path,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    seen: dict = {}  # pid -> its parent when first seen (a server outliving the launcher is handed to init)
    while proc.poll() is None:
        for pid, parent in parents().items():
            seen.setdefault(pid, parent)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/out/optuna.db").trials
    workers = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials}
    assert len(trials) == 2 and workers <= seen.keys(), (workers, len(seen))
    their_server = {seen[w] for w in workers}
    marks = sorted(p.name for p in site.glob("loaded-by-*"))
    if start_up == "same":
        assert their_server == {server} and marks == []
    else:
        (own,) = their_server
        assert own != server and seen[own] == proc.pid  # the launcher's own server …
        assert marks == [f"loaded-by-{own}"]  # … which loaded what its PYTHONPATH holds


_STARTER = """import subprocess, sys
from irpe_bench.cli import main  # as run.py does
from irpe_bench import preloaded

if __name__ == "__main__":
    preloaded.PRELOAD = []  # NOTE: what the server imports is not the point here: a light one starts in a moment
    proc = preloaded.start(["describe", "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    sys.stderr.write(err)
    sys.exit(proc.returncode)
"""


def test_a_process_started_from_a_script_that_imports_the_cli_runs_it_without_a_warning(tmp_path):
    """multiprocessing re-runs the starter's main script in each started process (as ``__mp_main__``); where that
    script imports the CLI, as ``run.py`` does, runpy warned of a second copy of the module on every worker's
    stderr — the first lines a user of the README's first command saw."""
    import sys

    script = tmp_path / "starter.py"
    script.write_text(_STARTER)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stderr, done.stderr[-3000:]
