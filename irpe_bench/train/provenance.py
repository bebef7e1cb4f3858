"""Where a result came from: the code's git commit and the library versions, recorded beside every run."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Dict, Optional


def git_commit() -> Optional[str]:
    """``HEAD`` of the checkout holding the package, ``-dirty`` with uncommitted changes to tracked files;
    None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) or None


def versions() -> Dict[str, str]:
    """Python and the libraries whose version changes a result."""
    import lightning
    import timm
    import torch
    import torchmetrics

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "lightning": lightning.__version__, "torchmetrics": torchmetrics.__version__}
