"""Faults that leave something behind, injected into real sweeps: each ends with every trial complete exactly once.

Real worker processes (``run.py sweep``), real Lightning trainers on tiny DeiTs, real storages (SQLite, a
journal file), real filesystems: a process SIGKILLed mid-trial whose checkpoints are then torn (truncated, as a
kill during a non-atomic write leaves them) or overwritten with garbage; a process SIGKILLed by the kernel in the
middle of its checkpoint write (``strace --inject`` at that system call); a full filesystem (a small tmpfs where
this user may mount one, else the kernel's EFBIG at the write call through ``RLIMIT_FSIZE``); a read-only run
directory. After each, the recovery command docs/cluster.md gives — the same sweep command (after
``--fail-running`` for a journal, which has no heartbeat) — completes the study."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from irpe_bench.cli import main
from irpe_bench.sweep.preempt import EXIT_PREEMPTED

from ._processes import start
from ._train_helpers import tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
CKPT_LIMIT = 150_000  # bytes: below a tiny checkpoint (~300 KB), above every other file a worker writes


def _sweep(tmp_path: Path, seeds, storage: str, out: Path, batches: int = 4, epochs: int = EPOCHS, **study) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer={"max_epochs": epochs, "benchmark_batches": 0,
                                                                    "limit_train_batches": batches}))
    data = {"study": {"name": "f", "sampler": "grid", "pruner": "none", "storage": storage, "heartbeat_s": 1,
                      "grace_s": 2, **study},
            "base": "base.yaml", "out_dir": str(out), "space": {"seed": {"choices": list(seeds)}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def _start(path: Path, log: Path, preexec=None):
    """The sweep as a process of its own; with ``preexec`` (a limit set before ``exec``), started as a user would."""
    argv = ["sweep", str(path), "--no-leaderboard"]
    if preexec is None:
        return start(argv, cwd=path.parent, env=_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"))
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *argv], cwd=path.parent, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), preexec_fn=preexec)


def _trials(url: str):
    return optuna.load_study(study_name="f", storage=url).trials


def _loads(p: Path) -> bool:
    try:
        torch.load(p, map_location="cpu", weights_only=True)
        return True
    except Exception:  # noqa: BLE001 - whatever makes it unloadable
        return False


def _each_point_complete_once(url: str, seeds, epochs: int = EPOCHS) -> list:
    trials = _trials(url)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == sorted(seeds), [(t.number, t.state) for t in trials]
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    assert all(t.user_attrs["status"] == "finished" and t.user_attrs["epochs"] == epochs for t in complete)
    return complete


def _mount_tmpfs(where: Path, size: str) -> bool:
    """A tmpfs of ``size`` at ``where`` where this user may mount one (root); False elsewhere."""
    if os.environ.get("IRPE_BENCH_TEST_NO_TMPFS") or os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.slow
def test_killed_workers_with_torn_and_garbage_checkpoints_resume_and_complete_each_trial_once(tmp_path):
    """Two workers started together on a fresh SQLite study (the README's first command: a launcher of two), each
    SIGKILLed after its trial's first epoch; then one trial's ``last.ckpt`` is truncated to a fifth, the other's
    checkpoints all overwritten with garbage. The same command again: the first resumes from its best checkpoint,
    the second starts afresh, both recorded — before, both failed on ``torch.load`` and a retry failed again.

    NOTE: each worker is killed as soon as its trial is going (its first epoch's checkpoints written, seen by
    polling the run directory, not the storage: a read of the storage takes longer than the epochs left would),
    with epochs to spare, so that the kill lands before the trial could end. The other one must find that trial
    running, not stale (it would retry it: not the scene of this test): it looks before its own first trial,
    and the grace period is well above the time between the two workers' starts (forked together) on a loaded
    machine; it is also what the recovery waits before it retries the killed trials. Freezing the first one
    (SIGSTOP) until the other had its trial was tried: frozen inside a heartbeat's write it held SQLite's lock,
    and the other worker waited on it until the test gave up."""
    url, epochs = f"sqlite:///{tmp_path}/optuna.db", 6
    path = _sweep(tmp_path, [0, 1], url, tmp_path / "out", batches=8, epochs=epochs, grace_s=5)
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "workers": 2}))
    launcher = _start(path, tmp_path / "launcher.log")
    going: dict = {}  # trial number -> (its worker's pid, its checkpoint directory)
    killed: dict = {}  # trial number -> its worker's pid
    try:
        deadline = time.time() + 240
        while len(killed) < 2 and time.time() < deadline and launcher.poll() is None:
            time.sleep(0.02)
            if len(going) < 2:
                try:
                    trials = _trials(url)
                except Exception:  # noqa: BLE001 - not created yet
                    continue
                for t in trials:
                    if t.state == TrialState.RUNNING and {"worker", "run_dir"} <= t.user_attrs.keys():
                        going.setdefault(t.number, (int(t.user_attrs["worker"].rsplit(":", 1)[1]),
                                                    Path(t.user_attrs["run_dir"]) / "checkpoints"))
            for number, (pid, ckpts) in going.items():
                if number not in killed and (ckpts / "last.ckpt").is_file() and any(ckpts.glob("epoch*.ckpt")):
                    os.kill(pid, signal.SIGKILL)
                    killed[number] = pid
    finally:
        if launcher.poll() is None and len(killed) < 2:
            launcher.kill()
        launcher.wait(timeout=60)
    told = (tmp_path / "launcher.log").read_text()
    assert len(killed) == 2 and len(set(killed.values())) == 2, told[-3000:]  # two trials, two workers
    assert launcher.returncode == 1 and told.count("exited with code -9") == 2, told[-3000:]
    before = _trials(url)
    assert sorted(t.number for t in before) == [0, 1]  # each grid point started once, by one worker
    assert [t.state for t in before] == [TrialState.RUNNING] * 2  # killed mid-trial, both
    torn, garbage = (Path(before[n].user_attrs["run_dir"]) / "checkpoints" for n in (0, 1))
    last = torn / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 5])
    assert [p.name for p in torn.glob("epoch*.ckpt")] and all(_loads(p) for p in torn.glob("epoch*.ckpt"))
    for p in garbage.glob("*.ckpt"):
        p.write_bytes(os.urandom(4096))

    assert main(["sweep", str(path), "--no-leaderboard"]) == 0  # the recovery command: the same one
    complete = _each_point_complete_once(url, [0, 1], epochs)
    by_dir = {Path(t.user_attrs["run_dir"]): t for t in complete}
    resumed, fresh = by_dir[torn.parent].user_attrs["resume"], by_dir[garbage.parent].user_attrs["resume"]
    assert resumed["skipped"][0]["file"] == "last.ckpt" and not resumed["fresh"]
    assert Path(resumed["from"]).name.startswith("epoch")
    assert fresh["fresh"] and fresh["from"] is None and "last.ckpt" in [s["file"] for s in fresh["skipped"]]
    assert (torn / "last.ckpt.unloadable").is_file()  # set aside, never tried again
    assert all(_loads(p) for d in (torn, garbage) for p in d.glob("*.ckpt"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (to kill the worker at that call)")
def test_a_worker_killed_inside_its_checkpoint_write_leaves_no_torn_checkpoint(tmp_path):
    """SIGKILL delivered by the kernel at the worker's first ``rename(2)`` — the moment its first checkpoint is
    written and not yet in place (``strace --inject``: at exactly that call, every time): a temporary file is
    left, never a ``*.ckpt`` that does not load. The same command again (the heartbeat fails the killed trial
    and retries it) starts it again; it removes the leftover and completes."""
    url = f"sqlite:///{tmp_path}/optuna.db"  # NOTE: SQLite renames nothing (a journal's lock does)
    path = _sweep(tmp_path, [0], url, tmp_path / "out")
    trace = tmp_path / "strace.log"
    # NOTE: the worker process only (no -f): its children (git, asked for the commit) are not touched
    cmd = ["strace", "-qq", "--seccomp-bpf", "-o", str(trace), "-e", "trace=rename,renameat,renameat2",
           "-e", "inject=rename,renameat,renameat2:signal=KILL:when=1",
           sys.executable, str(ROOT / "run.py"), "sweep", str(path), "--no-leaderboard"]
    with (tmp_path / "w.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=log,
                            timeout=240).returncode
    assert rc != 0, (tmp_path / "w.log").read_text()[-3000:]
    assert ".ckpt." in trace.read_text() and "+++ killed by SIGKILL" in trace.read_text(), trace.read_text()
    ckpts = tmp_path / "out" / "runs"
    assert [p.name.split(".")[-1] for p in ckpts.rglob("checkpoints/*")] == ["tmp"]  # written, never renamed
    assert [p for p in ckpts.rglob("*.ckpt") if not _loads(p)] == []
    assert [t.state for t in _trials(url)] == [TrialState.RUNNING]

    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    (done,) = _each_point_complete_once(url, [0])
    assert done.number == 1 and done.system_attrs["retry_history"] == [0]
    assert list(ckpts.rglob("checkpoints/*.tmp")) == []  # the leftover removed when the run started again


def _fill_after_first_epoch(url: str, out: Path, leave: int, done: threading.Event) -> None:
    """Once the trial has written its first epoch's checkpoints, fill the filesystem up to ``leave`` bytes."""
    deadline = time.time() + 240
    while time.time() < deadline and not done.is_set():
        try:
            running = [t for t in _trials(url) if t.state == TrialState.RUNNING and t.intermediate_values]
        except Exception:  # noqa: BLE001 - not created yet
            running = []
        ckpts = [Path(t.user_attrs["run_dir"]) / "checkpoints" for t in running]
        if ckpts and (ckpts[0] / "last.ckpt").is_file():
            with (out / "filler").open("wb") as f:
                f.write(b"\0" * max(0, shutil.disk_usage(out).free - leave))
            done.set()
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_a_full_filesystem_stops_the_worker_resumably_and_the_trial_resumes(tmp_path, capsys):
    """The run directories' filesystem fills up after the first epoch (a tmpfs, another job's files): the next
    checkpoint write fails; the previous one stays intact, the worker stops with the resumable exit code and
    says "no space left on …" (before: ``last.ckpt`` torn, the trial failed and every retry failed again);
    started again while the filesystem is still full it starts no trial (too little room for one epoch's
    checkpoints); with room again the same command resumes the trial from its last good checkpoint. Without a
    tmpfs (not root): the kernel's EFBIG at the first checkpoint write (``RLIMIT_FSIZE``), the same stop and
    the same recovery."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    out = tmp_path / "out"
    if _mount_tmpfs(out, "8m"):
        filled = threading.Event()
        try:
            path = _sweep(tmp_path, [0], url, out, batches=8)
            filler = threading.Thread(target=_fill_after_first_epoch, args=(url, out, 100_000, filled), daemon=True)
            filler.start()
            with pytest.raises(SystemExit) as stop:
                main(["sweep", str(path), "--no-leaderboard"])
            filled.set()
            filler.join(timeout=10)
            err = capsys.readouterr().err
            assert stop.value.code == EXIT_PREEMPTED, err[-3000:]
            assert "no space left on " in err and "is queued again as trial 1" in err, err[-3000:]
            (run_dir,) = (out / "runs").iterdir()
            last = run_dir / "checkpoints" / "last.ckpt"
            assert _loads(last) and torch.load(last, weights_only=True)["epoch"] < EPOCHS - 1  # intact, earlier
            assert list(run_dir.rglob("*.tmp")) == []

            with pytest.raises(SystemExit) as stop:  # still full: no trial starts
                main(["sweep", str(path), "--no-leaderboard"])
            err = capsys.readouterr().err
            assert stop.value.code == EXIT_PREEMPTED and "for another trial" in err, err[-3000:]
            assert [t.state for t in _trials(url)] == [TrialState.FAIL, TrialState.WAITING]

            (out / "filler").unlink()  # room again (the other job's files gone, a quota raised)
            assert main(["sweep", str(path), "--no-leaderboard"]) == 0
        finally:
            _umount(out)
        (done,) = _each_point_complete_once(url, [0])
        assert done.number == 1 and done.user_attrs["resume"]["from"] == str(last)
        assert done.intermediate_values.keys() == set(range(EPOCHS))
        return
    url = f"journal:///{tmp_path}/optuna.log"  # no tmpfs here: the kernel refuses the write (EFBIG)
    path = _sweep(tmp_path, [0], url, out)

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (CKPT_LIMIT,) * 2)

    proc = _start(path, tmp_path / "w.log", limited)
    err = (proc.wait(timeout=240), (tmp_path / "w.log").read_text())
    assert err[0] == EXIT_PREEMPTED and "cannot write checkpoint" in err[1] and "File too large" in err[1], err[1]
    assert "is queued again as trial 1" in err[1]
    assert [p for p in (out / "runs").rglob("*") if p.suffix in (".ckpt", ".tmp")] == []
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    (done,) = _each_point_complete_once(url, [0])
    assert done.number == 1


def test_a_read_only_run_directory_stops_the_worker_resumably(tmp_path, capsys):
    """The study's output folder read-only (a remounted tmpfs; without root: its mode): the worker starts the
    trial, cannot write its run directory, stops with the resumable exit code saying why and puts the trial
    back; writable again, the same command completes it."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    out = tmp_path / "out"
    mounted = _mount_tmpfs(out, "16m")
    if not mounted and os.geteuid() == 0:
        pytest.skip("root without a tmpfs: a directory's mode does not stop root from writing")
    path = _sweep(tmp_path, [0], url, out)
    out.mkdir(exist_ok=True)
    try:
        _remount(out, "ro") if mounted else out.chmod(0o555)
        with pytest.raises(SystemExit) as stop:
            main(["sweep", str(path), "--no-leaderboard"])
        err = capsys.readouterr().err
        assert stop.value.code == EXIT_PREEMPTED, err[-3000:]
        assert ("Read-only file system" if mounted else "Permission denied") in err, err[-3000:]
        assert [t.state for t in _trials(url)] == [TrialState.FAIL, TrialState.WAITING]
        _remount(out, "rw") if mounted else out.chmod(0o755)
        assert main(["sweep", str(path), "--no-leaderboard"]) == 0
        _each_point_complete_once(url, [0])
    finally:
        if mounted:
            _umount(out)
