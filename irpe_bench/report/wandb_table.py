"""The leaderboard as one W&B run beside the sweep's per-trial runs.

Per-trial runs already carry curves; what W&B cannot compute itself is the grouping by config, the statistics
across seeds and the Δ against the matching baseline. One ``job_type="leaderboard"`` run in the study's group
puts those next to the trials in the same dashboard. Offline unless asked otherwise (``WANDB_MODE`` wins, as
everywhere in this package), and the run is finished and wandb's service stopped before returning, so a
sweep process that reports repeatedly does not accumulate background processes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional

from .leaderboard import GroupRow, Leaderboard

COLUMNS: List[str] = [
    "rank", "variant", "method", "mode", "on", "index", "alpha_beta_gamma", "shared", "layers", "abs_pos", "n",
    "seeds", "acc1_best_mean", "acc1_best_std", "acc1_final_mean", "delta_acc1", "params", "delta_params",
    "macs", "train_img_s", "train_speed", "infer_img_s", "infer_speed", "trials", "config_key",
]


def _row(g: GroupRow) -> List[Any]:
    """Scalars only (W&B tables type each column); lists become space-separated strings."""
    return [g.rank, g.variant, g.method, g.mode, g.on, g.index, g.coefficients, g.shared, g.layers, g.abs_pos,
            g.n, " ".join(map(str, g.seeds)), g.acc1_best_mean, g.acc1_best_std, g.acc1_final_mean,
            g.delta_acc1, g.params, g.delta_params, g.macs, g.train_img_s, g.train_speed, g.infer_img_s,
            g.infer_speed, " ".join(map(str, g.trials)), g.config_key]


def log_leaderboard(board: Leaderboard, paths: Mapping[str, Any], project: str, group: Optional[str] = None,
                    save_dir: Path = Path("."), mode: str = "offline") -> str:
    """Log the ranked groups as ``leaderboard`` (a ``wandb.Table``) and every PNG in ``paths``; return the id.

    ``paths`` is what ``write_report`` returned (any value that is a ``.png`` path is logged as an image under
    ``plots/<name>``); ``group`` defaults to the study name.
    """
    import wandb

    from ..train.wandb_setup import env_mode

    mode = env_mode() or mode
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project, group=group or board.study_name, name=f"leaderboard-{board.study_name}",
        job_type="leaderboard", dir=str(save_dir), mode=mode, reinit="create_new",
        config={"study": board.study_name, **{f"sweep.{k}": v for k, v in board.sweep.items()}},
        settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_machine_info=True),
    )
    try:
        run.log({"leaderboard": wandb.Table(columns=COLUMNS, data=[_row(g) for g in board.groups])})
        images = {f"plots/{k}": wandb.Image(str(v)) for k, v in sorted(paths.items())
                  if isinstance(v, (str, Path)) and str(v).endswith(".png") and Path(v).is_file()}
        if images:
            run.log(images)
        best = board.best
        run.summary["leaderboard/best_variant"] = best.variant if best else None
        run.summary["leaderboard/best_acc1"] = best.acc1_best_mean if best else None
        run.summary["leaderboard/n_complete"] = board.counts["complete"]
        run_id = run.id
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    teardown = getattr(wandb, "teardown", None)
    if teardown is not None and wandb.run is None:  # never pull the service from under a caller's live run
        teardown()
    return run_id
