"""The terminal of a running sweep, read from a real ``run.py sweep`` process: progress lines, and nothing else.

What a user relies on: one line per event (trial start, epoch end, trial end) with the study's counts; on a
terminal one line rewritten in place; everything third-party (Lightning's device lines, tips, progress bars,
warnings, W&B's messages) in each run's ``train.log`` instead."""
from __future__ import annotations

import os
import pty
import re
import threading
from pathlib import Path

import pytest
import yaml

from ._processes import run as run_command
from ._train_helpers import tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = "deit_tiny_ctx_product_50_shared_k"
OWN_LINE = re.compile(r"^(\[s\] |sweep s: storage )")  # the progress lines and the sweep's header


def _sweep(tmp_path: Path, space, workers: int = 1) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, log={"wandb": True}, trainer={"enable_progress_bar": True}))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"study": {"name": "s", "sampler": "grid", "pruner": "none"}, "base": "base.yaml",
                                    "space": space, "out_dir": str(tmp_path / "out"), "workers": workers}))
    return path


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("WANDB_SILENT", None)  # W&B as a user has it: talkative
    return env


def _cmd(path: Path, leaderboard: bool = False) -> list:
    return ["sweep", str(path), *([] if leaderboard else ["--no-leaderboard"])]


@pytest.mark.slow
def test_progress_lines_on_stderr_and_the_chatter_in_each_runs_log(tmp_path):
    path = _sweep(tmp_path, {"optim.lr": {"choices": [0.002, 1.0e9]}})  # the second diverges at once
    proc = run_command(_cmd(path), env=_env(), cwd=ROOT, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line for line in lines if not OWN_LINE.match(line)] == []  # nothing else on the terminal
    assert proc.stdout == ""  # no progress bar either
    progress = [line for line in lines if line.startswith("[s] ")]
    assert progress[0] == f"[s] trial 0 ({PRODUCT}) started · 0/2 done, 0 failed, 1 running · ETA —"
    assert re.fullmatch(rf"\[s\] trial 0 \({PRODUCT}\) epoch 1/2 val acc1 \d+\.\d\d · 0/2 done, 0 failed, "
                        r"1 running · ETA —", progress[1]), progress[1]
    assert progress[2].startswith(f"[s] trial 0 ({PRODUCT}) epoch 2/2 val acc1 ")
    assert re.fullmatch(rf"\[s\] trial 0 \({PRODUCT}\) complete, val acc1 best (\d+\.\d\d) · 1/2 done, 0 failed, "
                        r"0 running · ETA \d+s · best val acc1 \1", progress[3]), progress[3]
    assert progress[4].startswith(f"[s] trial 1 ({PRODUCT}) started · 1/2 done")
    assert progress[5].startswith(f"[s] trial 1 ({PRODUCT}) diverged: train/loss became nan")
    assert progress[5].endswith("· 2/2 done, 1 failed, 0 running · best val acc1 " + progress[3].rsplit(" ", 1)[1])
    assert len(progress) == 6
    for run in sorted((tmp_path / "out" / "runs").iterdir()):
        log = (run / "train.log").read_text()
        assert "GPU available: False" in log and "wandb: Tracking run with wandb" in log, run
        assert "Epoch 0:" in log  # Lightning's progress bar
    first = next((tmp_path / "out" / "runs").glob("trial-0000-*"))
    assert "Tip:" in (first / "train.log").read_text()  # Lightning's tip, once per process
    assert "irpe_bench.sweep.objective: trial 0: " in (first / "train.log").read_text()  # the sweep's own records
    for text in (proc.stderr, proc.stdout):
        assert "GPU available" not in text and "Tip:" not in text and "wandb:" not in text and "Epoch 0" not in text


@pytest.mark.slow
def test_on_a_terminal_the_running_line_is_rewritten_in_place(tmp_path):
    # two workers, as the README's first command has: the launcher trains nothing, so what W&B prints for the
    # leaderboard's run would reach the terminal (after a trial in the same process it goes to that trial's log)
    path = _sweep(tmp_path, {"optim.lr": {"choices": [0.002]}}, workers=2)
    master, slave = pty.openpty()
    chunks: list = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # the leaderboard too (its W&B run): both streams on the terminal, as a user has them
        proc = run_command(_cmd(path, leaderboard=True), env=_env(), cwd=ROOT, stdout=slave, stderr=slave, timeout=400)
    finally:
        os.close(slave)
    reader.join(timeout=30)
    os.close(master)
    out = b"".join(chunks).decode()
    assert proc.returncode == 0, out[-3000:]
    assert f"\r\x1b[K[s] trial 0 ({PRODUCT}) started · 0/1 done" in out
    # each epoch's line replaces the one before (no newline), the trial's end replaces the last; the start stays
    events = re.findall(rf"\r\x1b\[K\[s\] trial 0 \({PRODUCT}\) (started|epoch \d/2|complete)[^\r\n]*"
                        r"(\r?\n|(?=\r\x1b))", out)  # "": rewritten by the next line
    assert events == [("started", "\r\n"), ("epoch 1/2", ""), ("epoch 2/2", ""), ("complete", "\r\n")], out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)  # on a terminal W&B colours its "wandb:" prefix
    assert "GPU available" not in plain and "wandb:" not in plain
    assert "Verdict on " in out and "W&B: run leaderboard-s (" in out  # where the leaderboard's W&B run is
