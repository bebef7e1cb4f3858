"""Every malformed input on every command is one clear line (``error: …`` naming the value, the field and what
is allowed) and exit code 2 — never a traceback: a broken ``--set`` value, a malformed YAML file, an option the
model does not have, an iRPE field out of range, a run directory whose checkpoint is garbage."""
from __future__ import annotations

from pathlib import Path

import pytest

from irpe_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(ROOT / "sweeps" / "mnist_quick.yaml")
BROKEN_SET = ["--set", "overrides.trainer.max_epochs=[1,"]


def _one_line_error(capsys, argv, *expected):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for text in expected:
        assert text in err, (text, err)


@pytest.mark.parametrize("command", ["sweep", "leaderboard", "status", "delete", "dashboard", "plan"])
def test_a_broken_set_value_on_every_study_command(capsys, command):
    _one_line_error(capsys, [command, SWEEP, *BROKEN_SET], "'overrides.trainer.max_epochs'", "'[1,'",
                    "not valid YAML", "allowed")


def test_a_broken_set_value_on_train_and_describe(capsys):
    _one_line_error(capsys, ["train", str(ROOT / "configs/mnist.yaml"), "--set", "optim.lr=[1,"], "'optim.lr'",
                    "not valid YAML")
    _one_line_error(capsys, ["describe", "--set", "rpe.layers=[0,"], "'rpe.layers'", "not valid YAML")
    _one_line_error(capsys, ["train", str(ROOT / "configs/mnist.yaml"), "--set", "optim"], "expected key=value")


def test_malformed_yaml_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: {name: x\nspace: [1,\n")
    _one_line_error(capsys, ["sweep", str(bad)], str(bad))
    _one_line_error(capsys, ["train", str(bad)], str(bad))


def test_fields_a_model_does_not_have(capsys):
    _one_line_error(capsys, ["describe", "--set", "model.rpe.method=product"], "model=", "allowed:", "'img_size'")
    assert main(["describe", "--set", "rpe.method=nope", "rpe.mode=x"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "method: unknown mapping 'nope'" in err and "'bias' or 'contextual'" in err


def test_resume_from_a_directory_without_a_loadable_run(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    _one_line_error(capsys, ["train", "--resume", str(run)], str(run))
    _one_line_error(capsys, ["train", "--resume", str(tmp_path / "missing")], "no such run directory")
