"""The environment handshake between rank 0 of a run and the DDP ranks that Lightning's launcher starts.

Lightning starts ranks 1.. by re-running rank 0's command line with ``LOCAL_RANK`` (``NODE_RANK``) set and the
environment of that moment. Such a rank must join rank 0's run — its run directory and W&B id and, in a sweep,
its trial and the checkpoint that trial resumes — instead of starting one of its own. Rank 0 publishes them in
the variables below before ``fit`` launches the ranks; a child rank reads them back. This module is the one
place that names them.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

#: the run's directory and W&B id (set by :func:`publish_run` in ``train``)
RUN_DIR, WANDB_ID = "IRPE_BENCH_RUN_DIR", "IRPE_BENCH_WANDB_ID"
#: the sweep trial's storage id and the checkpoint it resumes, "" for none (set around the objective's ``train``)
TRIAL_ID, RESUME = "IRPE_BENCH_TRIAL_ID", "IRPE_BENCH_RESUME"


def is_child_rank() -> bool:
    """A DDP process started by Lightning's launcher (it re-runs the command with LOCAL_RANK set)."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def publish_run(run_dir: Union[str, Path], wandb_id: str) -> None:
    """Rank 0: the run the child ranks join."""
    os.environ[RUN_DIR], os.environ[WANDB_ID] = str(run_dir), wandb_id


def inherited_run(run_dir: Optional[Union[str, Path]], wandb_id: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """A child rank: rank 0's run directory and W&B id, where published, else the given ones."""
    return os.environ.get(RUN_DIR, run_dir), os.environ.get(WANDB_ID, wandb_id)


@contextmanager
def published_trial(trial_id: int, resume: Optional[Union[str, Path]]) -> Iterator[None]:
    """Rank 0 of a sweep trial: the trial (and checkpoint) that ranks started inside the block join; withdrawn
    after it, so that the next trial's ranks never read this one's."""
    os.environ[TRIAL_ID] = str(trial_id)
    os.environ[RESUME] = str(resume or "")
    try:
        yield
    finally:
        os.environ.pop(TRIAL_ID, None)
        os.environ.pop(RESUME, None)


def joined_trial() -> Tuple[int, str, Optional[str]]:
    """A child rank of a sweep trial: (trial id, run directory, checkpoint to resume or None) from rank 0."""
    trial_id, run_dir = os.environ.get(TRIAL_ID), os.environ.get(RUN_DIR)
    if not trial_id or not run_dir:
        raise RuntimeError(f"a DDP rank of a sweep needs {TRIAL_ID} and {RUN_DIR} from rank 0")
    return int(trial_id), run_dir, os.environ.get(RESUME) or None
