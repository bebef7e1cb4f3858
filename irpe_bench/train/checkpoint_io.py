"""Checkpoints no fault can tear, and a resume that survives one torn anyway.

Writing: :class:`AtomicCheckpointIO` (Lightning's ``CheckpointIO`` plugin, so every checkpoint the trainer
writes — the best one, ``last.ckpt``, the preemption's — goes through it) serialises the checkpoint in memory,
writes it to a temporary file beside the target (``<name>.<pid>.tmp``: same filesystem, never a ``*.ckpt`` a
resume would pick), flushes and fsyncs it and renames it over the target (``os.replace``: atomic on POSIX), then
fsyncs the directory. A process killed mid-write leaves the previous checkpoint and a partial ``.tmp``; a
failed write (a full filesystem, a quota, a read-only directory) leaves the previous checkpoint intact and
raises :class:`CheckpointNotWritten` saying why ("no space left on /scratch/run/checkpoints: …").

Why not Lightning's own ``_atomic_save``: it writes through an fsspec transaction that, on a local filesystem,
truncates the target in place (a full tmpfs left ``last.ckpt`` at 20 KB of its 153 KB, and every resume failed).

Resuming: :func:`loadable_checkpoint` tries ``last.ckpt`` first, then every other ``*.ckpt`` of the run newest
first (the best checkpoint beside it), each with ``torch.load(weights_only=True)``; one that does not load
(truncated, garbage) is renamed ``<name>.unloadable`` so that nothing tries it again, and the next is tried. None
that loads → a fresh start of the run. The caller logs and records what was skipped (the sweep: the trial's
``resume`` user attribute), so a torn checkpoint costs the epochs since the last good one, never the trial.
"""
from __future__ import annotations

import io
import logging
import os
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from .disk_faults import CheckpointNotWritten

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
UNLOADABLE_SUFFIX = ".unloadable"


def write_atomic(path: Union[str, Path], data: Union[bytes, memoryview]) -> None:
    """``data`` into ``path`` through a temporary file, fsync and rename (module docstring)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):
            tmp.unlink()
        raise CheckpointNotWritten(path, len(data), e) from e
    with suppress(OSError):  # the rename itself durable; not every filesystem lets a directory be fsynced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes are atomic and whose failures say why (module docstring)."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(path, buffer.getbuffer())


def check_loads(path: Path) -> None:
    """Raise unless ``path`` is a Lightning checkpoint ``torch.load(weights_only=True)`` reads."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    missing = [k for k in ("state_dict", "epoch", "global_step") if k not in ckpt]
    if missing:
        raise ValueError(f"not a Lightning checkpoint (no {', '.join(missing)})")


@dataclass
class Resume:
    """What :func:`loadable_checkpoint` found: the checkpoint to resume (None: start afresh) and the files it
    skipped, each with why."""

    path: Optional[Path]
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def record(self) -> dict:
        """The trial's ``resume`` user attribute."""
        return {"from": None if self.path is None else str(self.path), "fresh": self.path is None,
                "skipped": [{"file": f, "error": e} for f, e in self.skipped]}


def candidates(ckpt_dir: Path, preferred: str) -> List[Path]:
    """``preferred`` first (``last.ckpt``), then the run's other checkpoints newest first."""
    if not ckpt_dir.is_dir():
        return []
    others = sorted((p for p in ckpt_dir.glob("*.ckpt") if p.name != preferred and p.is_file()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    first = ckpt_dir / preferred
    return ([first] if first.is_file() else []) + others


def loadable_checkpoint(ckpt_dir: Union[str, Path], preferred: str = "last.ckpt") -> Resume:
    """The newest checkpoint of ``ckpt_dir`` that loads (module docstring); removes the partial ``.tmp`` files a
    killed write left (only the run's owner resumes it, so no write of another process is in flight)."""
    ckpt_dir = Path(ckpt_dir)
    out = Resume(None)
    if ckpt_dir.is_dir():
        for tmp in ckpt_dir.glob(f"*{TMP_SUFFIX}"):
            with suppress(OSError):
                tmp.unlink()
                log.warning("removed %s: a checkpoint write that did not finish", tmp)
    for p in candidates(ckpt_dir, preferred):
        try:
            check_loads(p)
        except Exception as e:  # noqa: BLE001 - any reason it does not load: skipped, said, and set aside
            why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            out.skipped.append((p.name, why))
            aside = p.with_name(p.name + UNLOADABLE_SUFFIX)
            with suppress(OSError):
                os.replace(p, aside)
            log.warning("checkpoint %s does not load (%s): set aside as %s; trying the next", p, why, aside.name)
            continue
        out.path = p
        break
    if out.skipped:
        log.warning("resuming %s", f"from {out.path}" if out.path else "from scratch: no checkpoint of the run loads")
    return out


__all__ = ["AtomicCheckpointIO", "Resume", "loadable_checkpoint", "write_atomic", "check_loads"]
