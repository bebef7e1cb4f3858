"""The command line answers ``--help``, a subcommand's ``--help`` and a mistyped flag without importing torch,
Lightning, timm or Optuna (each costs seconds on a small CPU): only the command being run is imported, and the
command modules defer their heavy imports to the work itself. Read from ``python -X importtime`` of a real
process, so a new top-level import anywhere on that path turns this red."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from irpe_bench.cli import COMMANDS, HELP, load

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "timm", "optuna", "matplotlib", "wandb", "scipy")


def _imported(*argv: str) -> tuple[set, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "run.py"), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    names = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return names, proc


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["train", "--help"], ["leaderboard", "--help"],
                                  ["status", "--help"], ["plan", "--help"], ["describe", "--help"],
                                  ["sweep", "sweeps/mnist_quick.yaml", "--bogus"], ["nosuchcommand"]])
def test_help_and_bad_flags_import_nothing_heavy(argv):
    names, proc = _imported(*argv)
    heavy = sorted(n for n in names if n.split(".")[0] in HEAVY)
    assert not heavy, f"{argv}: imported {heavy[:10]}"
    if argv[-1] == "--help":
        assert proc.returncode == 0 and "usage: irpe-bench" in proc.stdout, proc.stderr[-2000:]
    else:
        assert proc.returncode == 2 and "error:" in proc.stderr  # argparse's one line


def test_the_top_level_help_lists_every_command_with_its_own_words():
    _, proc = _imported("--help")
    listed = " ".join(proc.stdout.split())
    for name in COMMANDS:
        assert " ".join(HELP[name].split())[:60] in listed, name  # argparse wraps the help text
    for name in COMMANDS:  # HELP is each command's run docstring (first paragraph), kept here in one place
        doc = " ".join((load(name).run.__doc__ or "").strip().split("\n\n")[0].split())
        assert HELP[name] == doc, name
