"""The samplers a study may use, one registry entry each, and the checks of a sweep against its sampler.

Each entry (:func:`register_sampler`) builds the Optuna sampler from ``study`` and says what it can do, read
off Optuna 5's source: whether it takes several objectives (CMA-ES does not: it raises on a multi-objective
study), whether it uses constraints (TPE, NSGA-II and GP read ``trial.constraints``; random, grid and brute
force ignore them and CMA-ES only warns, so constraints there are refused rather than silently ignored), and
what the space must be (grid: choices only; brute force: finite — choices, int ranges, float ranges with a
step; CMA-ES: at least one numeric range drawn in every trial, because it samples only the numeric parameters
common to all trials and hands categorical ones to a random sampler). GP handles categorical and conditional
parameters itself (its kernel has a categorical distance; parameters outside the common space are drawn at
random), so it needs nothing of the space.

Everything here runs when the sweep file loads (:func:`check_study` from the config's validation,
:func:`check_space` once the base config is known), before any storage or run exists.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

from . import space as S
from .objectives import METRICS, NEEDS_BENCHMARK


@dataclass(frozen=True)
class SamplerInfo:
    build: Callable[[Any], Any]  # StudyConfig -> optuna.samplers.BaseSampler
    multi_objective: bool
    constraints: bool
    space: str  # "any" | "choices" (grid) | "finite" (brute) | "range" (cmaes)


SAMPLERS: Dict[str, SamplerInfo] = {}


def register_sampler(name: str, *, multi_objective: bool, constraints: bool, space: str = "any"):
    def deco(build: Callable[[Any], Any]) -> Callable[[Any], Any]:
        SAMPLERS[name] = SamplerInfo(build, multi_objective, constraints, space)
        return build
    return deco


def _startup(st) -> int:
    """Random trials before a model-based sampler starts modelling: a third of the budget, 2 to 10."""
    return min(10, max(2, (st.n_trials or 10) // 3))


@register_sampler("tpe", multi_objective=True, constraints=True)
def _tpe(st):
    """Multivariate and grouped (the space is conditional, define-by-run), with ``constant_liar`` so that
    parallel workers do not all propose the same point while others still run; several objectives: MOTPE."""
    import optuna

    return optuna.samplers.TPESampler(seed=st.seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=_startup(st))


@register_sampler("random", multi_objective=True, constraints=False)
def _random(st):
    import optuna

    return optuna.samplers.RandomSampler(seed=st.seed)


@register_sampler("grid", multi_objective=True, constraints=False, space="choices")
def _grid(st):
    """The grid's points are enqueued as trials (``storage.open_study``): the sampler only draws what is left."""
    import optuna

    return optuna.samplers.RandomSampler(seed=st.seed)


@register_sampler("gp", multi_objective=True, constraints=True)
def _gp(st):
    """Gaussian-process BO (logEI / logEHVI, constrained variants when the trials carry constraints)."""
    import optuna

    return optuna.samplers.GPSampler(seed=st.seed, n_startup_trials=_startup(st), warn_independent_sampling=False)


@register_sampler("cmaes", multi_objective=False, constraints=False, space="range")
def _cmaes(st):
    """CMA-ES over the numeric ranges drawn in every trial; categorical and conditional fields are drawn at
    random (its independent sampler: the warning it would print each trial is switched off, this says it)."""
    import optuna

    return optuna.samplers.CmaEsSampler(seed=st.seed, warn_independent_sampling=False)


@register_sampler("nsga2", multi_objective=True, constraints=True)
def _nsga2(st):
    """NSGA-II with a population of a third of the budget (2 to 50, Optuna's default 50 would leave a small
    study all random: the first generation is random, later ones are bred from the best)."""
    import optuna

    population = min(50, max(2, (st.n_trials or 150) // 3))
    return optuna.samplers.NSGAIISampler(seed=st.seed, population_size=population)


@register_sampler("brute", multi_objective=True, constraints=False, space="finite")
def _brute(st):
    """Every point of a finite define-by-run space once (Optuna's BruteForceSampler)."""
    import optuna

    return optuna.samplers.BruteForceSampler(seed=st.seed)


def make(st) -> Any:
    """The Optuna sampler of ``study`` (a StudyConfig)."""
    return SAMPLERS[st.sampler].build(st)


def _allowed(flag: str) -> List[str]:
    return [k for k, v in SAMPLERS.items() if getattr(v, flag)]


def check_study(cfg) -> None:
    """Checks of a :class:`~.config.SweepConfig` that need no base config: the sampler against the number of
    objectives and the constraints, pruning with several objectives, repeats, a brute-force space."""
    st, info = cfg.study, SAMPLERS[cfg.study.sampler]
    n = len(st.objectives)
    names = [o.metric for o in st.objectives]
    if n > 1 and not info.multi_objective:
        raise ValueError(f"study.sampler={st.sampler!r} optimises a single objective; study.objectives has {n} "
                         f"({names}); samplers for several: {_allowed('multi_objective')}")
    if n > 1 and st.pruner != "none":
        raise ValueError(f"study.pruner={st.pruner!r} with {n} objectives ({names}): Optuna prunes "
                         "single-objective studies only (trial.report does not take several objectives); "
                         "set study.pruner: none")
    if st.constraints and not info.constraints:
        raise ValueError(f"study.constraints={list(st.constraints)} with study.sampler={st.sampler!r}, which does "
                         f"not use constraints; samplers that do: {_allowed('constraints')}")
    if st.repeats > 1:
        if "seed" in cfg.space:
            raise ValueError(f"study.repeats={st.repeats} with seed in the space: repeats trains seeds base seed, "
                             "+1, ... for every point; search the seed or repeat it, not both (remove space.seed)")
        if st.sampler == "grid":
            raise ValueError(f"study.repeats={st.repeats} with study.sampler='grid': a grid repeats by seeds in its "
                             "space (seed: {choices: [0, 1, 2]}), which it pairs across rows and extends; "
                             "repeats are for samplers that learn from each point's mean")
        if cfg.devices_per_worker > 1:
            raise ValueError(f"study.repeats={st.repeats} with devices_per_worker={cfg.devices_per_worker}: a DDP "
                             "trial's ranks join one run; use repeats: 1 (or seeds in the space) with DDP")
    if info.space == "finite":
        for name, spec in cfg.space.items():
            if not spec.categorical and not spec.derived and not spec.int and spec.step is None:
                raise ValueError(f"study.sampler='brute' needs a finite space; space.{name} is a float range "
                                 f"without a step ({spec.low:g}..{spec.high:g}): give step: S, int: true or "
                                 "choices")


def _full_space(space) -> Dict[str, S.ParamSpec]:
    """Every range as the choices it can take (int and stepped float ranges: finite), for counting points."""
    out = {}
    for name, spec in space.items():
        if spec.categorical or spec.derived:
            out[name] = spec
            continue
        step = spec.step or 1
        count = int(math.floor((spec.high - spec.low) / step + 1e-9)) + 1
        values = [int(spec.low) + i * int(step) for i in range(count)] if spec.int else \
            [spec.low + i * step for i in range(count)]
        out[name] = S.ParamSpec(choices=tuple(values))
    return out


def check_space(sweep) -> None:
    """Checks that need the base config (a :class:`~.config.Sweep`): CMA-ES has a numeric range in every
    trial, brute force has at least ``n_trials`` points, inference speed is measured where it is used."""
    cfg = sweep.config
    st, info = cfg.study, SAMPLERS[cfg.study.sampler]
    space, base = cfg.space, sweep.base_flat
    if info.space == "range":
        ranges = [k for k, s in space.items() if not s.categorical and not s.derived]
        pts = list(S.points(space, base, limit=4096))
        always = [k for k in ranges if all(k in p for p in pts)]
        if not always:
            why = (f"space.{ranges[0]} is not drawn in every trial (e.g. not under model.rpe.method: none)"
                   if ranges else "the space has only choices")
            raise ValueError(f"study.sampler='cmaes' needs at least one numeric range (low/high) drawn in every "
                             f"trial: {why}; CMA-ES cannot search choices. Use tpe, gp or random, or add a range")
    if info.space == "finite" and st.n_trials:
        size = sum(1 for _ in itertools.islice(S.points(_full_space(space), base), st.n_trials))
        if size < st.n_trials:
            raise ValueError(f"study.n_trials={st.n_trials}: sampler 'brute' has only {size} points in this space "
                             f"(it would repeat them); set study.n_trials: {size}")
    used = [o.metric for o in st.objectives] + [c.metric for c in st.parsed_constraints]
    if sweep.base_config.trainer.benchmark_batches == 0:
        for m in used:
            if m in NEEDS_BENCHMARK:
                raise ValueError(f"study objective/constraint {m!r} ({METRICS[m].attr}) needs the inference "
                                 "timing after training, which trainer.benchmark_batches=0 switches off")


__all__ = ["SAMPLERS", "SamplerInfo", "register_sampler", "make", "check_study", "check_space"]
