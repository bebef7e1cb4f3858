"""What a full or unwritable disk looks like, for the code that writes checkpoints and for the sweep's
launcher and ``status`` that only report it: byte counts as people read them, the free space at a path, the
errnos that are faults of the place a run writes (not of the run), and the error a failed checkpoint write raises.

Its own module, with no Lightning or torch in its imports, so that the processes which only look at disks (the
launcher of several workers, ``run.py status``) do not pay for importing the training stack.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Optional, Union

#: errors of the place a run writes, not of the run: a full disk, a quota, a file size limit, a read-only or
#: forbidden directory. A sweep worker stops on them with the resumable exit code (the trial is put back).
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES}


def hsize(n: float) -> str:
    """A byte count as people read it (``512 B``, ``3.1 MB``), for the messages of a full disk."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def free_bytes(path: Union[str, Path]) -> int:
    """Free bytes (for this user) on the filesystem holding ``path`` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


class CheckpointNotWritten(OSError):
    """A checkpoint could not be written; the previous one at that path is intact. ``errno`` is the cause's."""

    def __init__(self, path: Path, size: int, cause: OSError) -> None:
        where = path.parent
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            what = f"no space left on {where}: {path.name} ({hsize(size)}) not written, {hsize(free_bytes(where))} free"
        else:
            what = f"cannot write checkpoint {path}: {cause.strerror or cause}"
        super().__init__(cause.errno, f"{what}; the previous {path.name} (if any) is intact")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def environment_error(e: Optional[BaseException]) -> Optional[OSError]:
    """The ``OSError`` of :data:`ENVIRONMENT_ERRNOS` in ``e`` or what caused it (None: not such a fault)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None
