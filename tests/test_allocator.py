"""irpe_bench.allocator: the command line keeps freed memory (no page faults per large tensor) unless told not to."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from irpe_bench import allocator
from irpe_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocate, touch and free a 64 MiB tensor (above glibc's largest dynamic mmap threshold, 32 MiB) many times, as
# training steps do; report the minor page faults of the last cycles, per cycle.
FAULTS = """
import json, resource, sys, torch
from irpe_bench import allocator
effect = allocator.configure()
for _ in range(24):  # NOTE: glibc settles its heap over the first cycles (4-8 here)
    torch.empty(16 << 20).fill_(1.0)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.empty(16 << 20).fill_(1.0)
print(json.dumps({"effect": effect, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 4}))
"""


def _faults(policy: str) -> dict:
    env = {**os.environ, "IRPE_BENCH_MALLOC": policy}
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the policy changes glibc's malloc only")
def test_keep_reuses_freed_memory_instead_of_faulting_in_fresh_pages():
    kept, system = _faults("keep"), _faults("system")
    assert kept["effect"] == "keep" and system["effect"] == "system"
    assert kept["faults"] < 64  # 64 MiB is 16,384 pages of 4 KiB: reused, none faulted in again
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[always]" not in thp.read_text():  # NOTE: 2 MiB pages would fault 32 times per cycle
        assert system["faults"] > 10_000  # glibc's default maps and unmaps it every time


def test_bad_policy_names_the_variable_the_value_and_the_choices(monkeypatch, capsys):
    monkeypatch.setenv("IRPE_BENCH_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match=r"IRPE_BENCH_MALLOC='jemalloc': allowed values: keep, system"):
        allocator.policy()
    assert main(["describe"]) == 2  # before any work, one line
    assert "IRPE_BENCH_MALLOC='jemalloc'" in capsys.readouterr().err


def test_system_policy_changes_nothing(monkeypatch):
    """From a process's initial state (nothing applied), ``system`` applies nothing — ``configure`` records no
    setting and reports ``system`` — while ``keep`` from the same state does apply (the contrast makes the
    first half able to fail)."""
    monkeypatch.setattr(allocator, "_applied", None)  # NOTE: the module's state before any configure()
    monkeypatch.setenv("IRPE_BENCH_MALLOC", "system")
    assert allocator.configure() == "system" and allocator.in_effect() == "system"
    assert allocator._applied is None  # glibc was not touched: nothing to report but its defaults
    monkeypatch.setenv("IRPE_BENCH_MALLOC", "keep")
    effect = allocator.configure()
    assert allocator._applied == effect and effect != "system"
    assert effect.startswith("keep") if GLIBC else effect == "system (not glibc)"
