"""W&B for one run: identity (project, group, name = slug, tags), offline without an API key, clean shutdown.

The whole resolved config goes to W&B flattened (``model.rpe.method`` …) so dashboards can filter and group by
any field. The API key is never read into the config or logged; only its presence decides online/offline.
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import List, Optional

from .config import TrainConfig, flatten


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def env_mode() -> Optional[str]:
    """``offline``/``disabled`` when ``WANDB_MODE`` forces it (``dryrun`` is offline), else None."""
    env = os.environ.get("WANDB_MODE")
    if env in ("offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    return None


def resolve_mode(config: TrainConfig) -> str:
    """``online`` only when asked for (or ``auto``) *and* a key exists; ``WANDB_MODE`` in the environment wins."""
    if env_mode() is not None:
        return env_mode()
    if config.log.mode == "offline" or not has_api_key():
        return "offline"
    return "online"


def variant_tags(config: TrainConfig) -> List[str]:
    """``method:product mode:contextual on:k layers:all index:piecewise`` (+ ``norpe`` / ``noabs``)."""
    rpe = config.model.rpe
    tags = list(config.log.tags)
    if rpe is None:
        tags.append("norpe")
    else:
        layers = rpe.layers if rpe.layers == "all" else "-".join(map(str, rpe.layers))
        tags += [f"method:{rpe.method}", f"mode:{rpe.mode}", f"on:{rpe.on}", f"layers:{layers}",
                 f"index:{rpe.index}"]
    if not config.model.abs_pos:
        tags.append("noabs")
    tags.append(f"data:{config.data.name}")
    return tags


def make_wandb_logger(config: TrainConfig, slug: str, run_dir: Path, wandb_id: str):
    """A ``WandbLogger`` writing under ``run_dir/wandb``; resumes the same W&B run when ``wandb_id`` exists."""
    from lightning.pytorch.loggers import WandbLogger

    mode = resolve_mode(config)
    return WandbLogger(
        project=config.log.project, entity=config.log.entity, group=config.log.group or slug, name=slug,
        id=wandb_id, resume="allow", save_dir=str(run_dir), tags=variant_tags(config), mode=mode,
        config={**flatten(config.model_dump(mode="json")), "variant": slug}, log_model=False,
    )


def finish_wandb(exit_code: int = 0) -> None:
    """Close the run and stop wandb's background service, so in-process sweeps do not accumulate them."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
    teardown = getattr(wandb, "teardown", None)
    if teardown is not None:
        teardown()


def _leet(run_dir: Path, *args: str) -> Optional[str]:
    import subprocess

    files = sorted(Path(run_dir, "wandb").glob("offline-run-*/run-*.wandb"))
    if not files:
        return None
    return subprocess.run(["wandb", "leet", "inspect", *args, str(files[-1])], capture_output=True, text=True,
                          timeout=120, check=True).stdout


def read_offline_history(run_dir: Path) -> Optional[List[dict]]:
    """Logged history rows (metric → value) of the latest offline run under ``run_dir/wandb``.

    Read with wandb's own ``wandb leet inspect --json`` so the check is of what ``wandb sync`` would upload.
    """
    import json

    out = _leet(run_dir, "--json")
    if out is None:
        return None
    recs = (json.loads(line) for line in out.splitlines() if line.strip())
    return [r["history"]["item"] for r in recs if r.get("type") == "history"]


def read_offline_summary(run_dir: Path) -> Optional[dict]:
    """State, name, tags, config and summary of the latest offline run (``wandb leet inspect --summary``)."""
    import json

    out = _leet(run_dir, "--summary", "--json")
    return None if out is None else json.loads(out)
