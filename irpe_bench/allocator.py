"""Keep freed memory in the process instead of handing it back to the kernel every step (glibc ``malloc``).

Why: PyTorch allocates CPU tensors with the C library's ``malloc`` and caches nothing itself. glibc returns
large blocks to the kernel (``mmap`` above a threshold that adapts only up to 32 MiB, heap trimming above twice
that), so a training step that frees and re-allocates the same big activations every step touches fresh pages
every step: each 4 KiB page is a minor page fault (a kernel entry and a zeroed page). Eager attention with iRPE
frees and re-allocates more and larger transient (B, H, L, L) tensors per step than the no-RPE baseline's fused
kernel, so it pays this more; with memory kept, neither faults in steady state (docs/performance.md has the
measured faults and step times).

What it changes: ``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` (blocks below it come from the reusable heap; 32 MiB where
an older glibc refuses more) and ``mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)`` (the heap is not shrunk). The process
keeps its high-water mark of memory for its lifetime — what a training or benchmark process wants, and what
PyTorch's CUDA caching allocator does on the GPU. The command line (``run.py``, ``irpe-bench``, sweep workers,
Lightning's DDP processes, which re-run the command) applies it before any work; importing the package never
does. ``IRPE_BENCH_MALLOC=system`` leaves the C library's defaults alone (e.g. to run with jemalloc or tcmalloc
preloaded, or to measure without it); benchmark JSON and ``summary.json`` record which was in effect.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

#: ``IRPE_BENCH_MALLOC`` values: ``keep`` (default) keeps freed memory; ``system`` changes nothing.
POLICIES = ("keep", "system")
ENV_VAR = "IRPE_BENCH_MALLOC"

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Tried in order: glibc ≥ 2.35 takes 1 GiB; older ones cap the threshold at 32 MiB (on 64-bit).
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
TRIM_THRESHOLD = 2**31 - 1  # NOTE: mallopt takes a C int

_applied: Optional[str] = None  # what configure() did in this process; None: nothing (glibc's defaults)


def policy() -> str:
    """The requested policy from ``IRPE_BENCH_MALLOC``; a bad value fails before any work."""
    value = os.environ.get(ENV_VAR, "keep").strip().lower() or "keep"
    if value not in POLICIES:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: allowed values: {', '.join(POLICIES)}")
    return value


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _keep() -> str:
    """Set glibc's thresholds; returns what took effect (:func:`in_effect`'s words)."""
    libc = _glibc()
    if libc is None:
        return "system (not glibc)"
    # NOTE: mallopt returns 1 on success; a value it refuses leaves that default in place
    mmap = next((t for t in MMAP_THRESHOLDS if libc.mallopt(_M_MMAP_THRESHOLD, t) == 1), None)
    trim = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if mmap is None or not trim:
        return f"partial (mmap threshold {mmap or 'refused'}, heap trimming {'off' if trim else 'refused'})"
    return "keep" if mmap == MMAP_THRESHOLDS[0] else f"keep (mmap threshold {mmap >> 20} MiB)"


def configure() -> str:
    """Apply :func:`policy` to this process (and the processes it forks) once; returns :func:`in_effect`."""
    global _applied
    requested = policy()  # NOTE: checked on every call, so a bad value fails every command before its work
    if _applied is None and requested == "keep":
        _applied = _keep()
    return in_effect()


def in_effect() -> str:
    """``keep`` when :func:`configure` changed glibc's thresholds in this process (with the threshold where glibc
    capped it), ``partial (…)`` where it refused one, else ``system`` (with the reason when ``keep`` was asked
    for but this is not glibc)."""
    return _applied or "system"


__all__ = ["configure", "in_effect", "policy", "POLICIES", "ENV_VAR"]
