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
    "rank", "rank_band", "variant", "method", "mode", "on", "index", "alpha_beta_gamma", "shared", "layers",
    "abs_pos", "n", "seeds", "mean", "ci95_low", "ci95_high", "delta", "delta_ci95_low", "delta_ci95_high",
    "p_value", "p_holm", "test", "n_pairs", "significant", "verdict", "acc1_best_mean_optimistic",
    "acc1_final_mean", "params", "delta_params", "macs", "train_img_s_median", "train_img_s_min",
    "train_img_s_max", "train_speed", "infer_img_s_median", "infer_speed", "device", "trials", "config_key",
]


def _lo_hi(ci: Optional[List[float]]) -> List[Optional[float]]:
    return [None, None] if ci is None else [ci[0], ci[1]]


def _row(g: GroupRow) -> List[Any]:
    """Scalars only (W&B tables type each column); lists become space-separated strings or two columns."""
    train = _lo_hi(g.train_img_s_range)
    return [g.rank, g.rank_band, g.variant, g.method, g.mode, g.on, g.index, g.coefficients, g.shared, g.layers,
            g.abs_pos, g.n, " ".join(map(str, g.seeds)), g.mean, *_lo_hi(g.ci95), g.delta, *_lo_hi(g.delta_ci95),
            g.p_value, g.p_holm, g.test, g.n_pairs, g.significant, g.verdict, g.acc1_best_mean,
            g.acc1_final_mean, g.params, g.delta_params, g.macs, g.train_img_s, *train, g.train_speed,
            g.infer_img_s, g.infer_speed, g.device, " ".join(map(str, g.trials)), g.config_key]


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
    from .render import redact_data

    run = wandb.init(
        project=project, group=group or board.study_name, name=f"leaderboard-{board.study_name}",
        job_type="leaderboard", dir=str(save_dir), mode=mode, reinit="create_new",
        config=redact_data({"study": board.study_name, "metric": board.metric,
                            **{f"sweep.{k}": v for k, v in board.sweep.items()}}),
        # NOTE: silent: W&B's own lines stay off the terminal of the command that wrote the leaderboard, whose
        # last lines are the verdict and where the files are (sweep/leaderboard.py says where this run is)
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, x_disable_machine_info=True),
    )
    try:
        extra = [k for k in ("pareto", "feasible") if k not in board.omitted()["group"]]  # new kinds of study only
        run.log({"leaderboard": wandb.Table(columns=COLUMNS + extra,
                                            data=[_row(g) + [getattr(g, k) for k in extra] for g in board.groups])})
        images = {f"plots/{k}": wandb.Image(str(v)) for k, v in sorted(paths.items())
                  if isinstance(v, (str, Path)) and str(v).endswith(".png") and Path(v).is_file()}
        if images:
            run.log(images)
        best = board.best
        run.summary["leaderboard/best_variant"] = best.variant if best else None
        run.summary["leaderboard/metric"] = board.metric
        run.summary["leaderboard/best_acc1"] = best.mean if best else None  # first by mean; see its rank_band
        run.summary["leaderboard/best_rank_band"] = best.rank_band if best else None
        run.summary["leaderboard/mdd"] = board.mdd
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
