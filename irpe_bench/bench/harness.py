"""Measuring: interleaved timing, paired ratios, peak memory, tables and JSON (no models here).

How it measures (and why):

* **Interleaved rounds.** Every case (baseline, ours, reference) is warmed up, then each round runs one
  step of every case, in an order rotated per round. Slow drifts of the machine (other processes, thermal,
  allocator state) hit all cases alike. A case's time is the median over rounds; ``spread`` is the
  inter-quartile range over the median.
* **Clock.** Wall time by default; ``--clock cpu`` (process CPU time, for single-threaded runs on a busy,
  shared machine) where other jobs would otherwise be timed too.
* **Paired ratios.** ``×base`` and ``×ref`` are medians of the *per-round* ratios to the baseline / to the
  reference implementation of the same mode, so a noisy round cancels out of the pair.
* **Peak memory**: one extra, untimed training step under ``torch.profiler`` with
  ``profile_memory=True``: every allocation and free of the c10 allocator, summed in time order; the peak of
  that running sum, plus the bytes already live before the step (parameters and optimiser state), is the
  step's peak tensor memory. It counts tensors, not allocator caches or Python objects. On CUDA,
  ``torch.cuda.max_memory_allocated`` is used instead (the same quantity, measured by the allocator).
* **Equivalence.** Before timing, ours and the reference get the same weights (random iRPE tables) and the
  same batch; ``max|Δ|`` is the largest difference of their logits.

Speed is only ever reported here, as ratios; tests check that this runs, never how fast.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .. import allocator
from ..train.throughput import cpu_model, synchronize


# ---------------------------------------------------------------------------------------------- measuring
@dataclass
class Case:
    """One timed thing: ``step()`` runs one unit of work (a training step, a forward pass, …)."""

    name: str
    mode: str  # key of MODES, or "none" for the baseline
    impl: str  # "baseline" | "ours" | "reference"
    step: Callable[[], Any]
    static_bytes: int = 0
    check: Optional[float] = None  # max |ours - reference| (filled for ours)
    times: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None
    macs: Optional[int] = None  # multiply–accumulates of one image's forward (the FLOP floor of a ratio)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def run_interleaved(cases: Sequence[Case], warmup: int, rounds: int, device: torch.device,
                    budget_s: Optional[float] = None, clock: str = "wall") -> None:
    """Warm every case up, then ``rounds`` rounds of one step per case, order rotated per round.

    ``clock="cpu"`` times each step by the process's CPU time instead of wall time: on a machine shared
    with other jobs, a single-threaded run is then immune to being descheduled (with more threads it would
    also count OpenMP spin-waits, so use it with ``threads=1``). CUDA always uses wall time.
    """
    timer = CLOCKS["wall" if device.type == "cuda" else clock]
    for case in cases:
        for _ in range(warmup):
            case.step()
    synchronize(device)
    start = time.perf_counter()
    for r in range(rounds):
        order = list(cases[r % len(cases):]) + list(cases[:r % len(cases)])
        for case in order:
            synchronize(device)
            t0 = timer()
            case.step()
            synchronize(device)
            case.times.append(timer() - t0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break  # NOTE: never fewer than 3 rounds; the budget only trims long runs


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak tensor bytes allocated *during* ``fn()`` above what was live before it (see module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() ==
              torch._C._autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler backend's start/stop lines, written straight to file descriptor 2."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured stderr (pytest): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def summarize(cases: Sequence[Case], reference_of: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:
    """One row per case: median, spread, paired ratios to the baseline and to the same mode's reference."""
    base = next((c for c in cases if c.impl == "baseline"), None)
    refs = {c.mode: c for c in cases if c.impl == "reference"}
    rows = []
    for c in cases:
        n = min(len(c.times), len(base.times)) if base else len(c.times)
        med = statistics.median(c.times)
        q = statistics.quantiles(c.times, n=4) if len(c.times) >= 2 else [med, med, med]
        row = dict(case=c.name, impl=c.impl, mode=c.mode, median_ms=1e3 * med, spread=(q[2] - q[0]) / med,
                   rounds=len(c.times))
        if base is not None:
            row["x_base"] = statistics.median(c.times[i] / base.times[i] for i in range(n))
        ref = refs.get((reference_of or {}).get(c.mode, c.mode))
        if ref is not None and c.impl != "baseline":
            m = min(len(c.times), len(ref.times))
            row["x_ref"] = statistics.median(c.times[i] / ref.times[i] for i in range(m))
        if c.peak_bytes is not None:
            row["peak_mib"] = (c.static_bytes + c.peak_bytes) / 2 ** 20
            if base is not None and base.peak_bytes is not None:
                row["mem_x_base"] = (c.static_bytes + c.peak_bytes) / (base.static_bytes + base.peak_bytes)
        if c.macs is not None and base is not None and base.macs:
            row["macs_x_base"] = c.macs / base.macs
        if c.check is not None:
            row["max_abs_diff"] = c.check
        rows.append(row)
    return rows


COLUMNS = [("case", "{:<22}"), ("median_ms", "{:>10.1f}"), ("spread", "{:>7.1%}"), ("x_base", "{:>7.3f}"),
           ("x_ref", "{:>7.3f}"), ("macs_x_base", "{:>8.3f}"), ("peak_mib", "{:>9.1f}"), ("mem_x_base", "{:>8.3f}"),
           ("max_abs_diff", "{:>9.1e}")]
HEADERS = {"case": "variant", "median_ms": "median ms", "spread": "IQR/med", "x_base": "×base", "x_ref": "×ref",
           "macs_x_base": "MACs×base", "peak_mib": "peak MiB", "mem_x_base": "mem×base", "max_abs_diff": "max Δ"}


def format_table(title: str, rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    """Plain-text (or markdown) table of ``summarize`` rows; empty cells where a column does not apply."""
    cols = [(k, f) for k, f in COLUMNS if any(k in r for r in rows)]
    widths = [len(f.format(*([0.0] if k != "case" else [""]))) for k, f in cols]
    head = [HEADERS[k] for k, _ in cols]

    def cell(r, k, f):
        return f.format(r[k]).strip() if k in r else ""

    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(r, k, f) for k, f in cols) + " |" for r in rows]
        return "\n".join(lines)
    lines = [title, "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    for r in rows:
        lines.append("  ".join(cell(r, k, f).rjust(w) if i else cell(r, k, f).ljust(w)
                               for i, ((k, f), w) in enumerate(zip(cols, widths))))
    return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else the CPU; any other name as given (``cpu``, ``cuda``, ``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def environment(threads: int, device: torch.device) -> Dict[str, Any]:
    env = dict(torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
               processor=platform.processor() or cpu_model(), cpu_count=os.cpu_count(), threads=threads,
               cpu_capability=torch.backends.cpu.get_cpu_capability(),
               device=str(device), load_avg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
               malloc=allocator.in_effect())
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def write_json(path: Path, payload: Dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
