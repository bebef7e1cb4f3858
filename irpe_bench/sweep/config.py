"""``SweepConfig``: a study (name, storage, sampler, pruner, budget), a base training config and a search space.

Everything is checked before any trial starts: the base config, every searched field's name, every choice
(each must give a valid training config in at least one legal combination — the error names the field, the
value and why), the sampler against the space (grid needs choices) and against the study's objectives,
constraints and repeats (:mod:`.samplers`, :mod:`.objectives`), the storage URL's scheme.
A sweep file (``sweeps/*.yaml``)::

    study: {name: digits_quick, sampler: grid, pruner: none}
    base: ../configs/digits.yaml          # relative to this file
    overrides: {trainer: {max_epochs: 6}}
    space:
      model.rpe.method: {choices: [none, euclidean, quant, cross, product]}
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Literal, Mapping, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..keys import STORAGE_ENV
from ..redact import redact
from ..train.config import TrainConfig, build_config, flatten, format_errors, merge, read_yaml, submodel
from . import objectives as O
from . import samplers as SM
from . import space as S
from .seeds import SeedsSpec

#: identity keys present only when a study has other than the single default objective (:meth:`Sweep.identity`)
IDENTITY_EXTRA = ("objectives", "constraints", "repeats", "seeds", "arms")
#: validation enumerates at most this many combinations (large spaces: a prefix of them)
_CHECK_LIMIT = 4096


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StudyConfig(_Frozen):
    """The Optuna study. ``storage`` None → SQLite in the output folder; ``postgresql://…`` (or any
    SQLAlchemy URL) for sweeps across processes and machines; ``journal:///path/file.log`` for a journal file."""

    name: str = Field(..., description="study name; also the output folder and the W&B group")
    storage: Optional[str] = None
    sampler: Literal["tpe", "random", "grid", "gp", "cmaes", "nsga2", "brute"] = "tpe"  # the keys of samplers.SAMPLERS
    seed: int = Field(0, description="sampler seed")
    pruner: Literal["none", "median", "hyperband"] = "median"
    pruner_warmup_epochs: int = Field(2, ge=0, description="median: epochs reported before pruning can start")
    n_trials: Optional[int] = Field(None, ge=1, description="trials to finish in total, over all workers; "
                                    "grid: default the number of grid points")
    timeout_s: Optional[float] = Field(None, gt=0, description="no new trial starts after this many seconds")
    trial_timeout_s: Optional[float] = Field(None, gt=0, description="a trial training longer than this (per "
                                             "attempt) is stopped and recorded as failed; the sweep goes on")
    heartbeat_s: int = Field(30, ge=1, description="RDB storages: a running trial's heartbeat interval")
    grace_s: int = Field(90, ge=2, description="a trial with no heartbeat for this long was killed: it is "
                         "failed and retried (resumed from its last checkpoint)")
    max_retry: int = Field(3, ge=0)
    storage_retry_s: float = Field(120, gt=0, le=86400, description="RDB storages: how long a worker retries a lost "
                                   "database connection (a restart, an outage) before it stops (exit 75, trial "
                                   "resumable)")
    objectives: Tuple[O.ObjectiveSpec, ...] = Field(O.DEFAULT_OBJECTIVES, description="what the sampler optimises "
                                                    "(objectives.py: val_acc1, train_img_s, infer_img_s, params, macs)")
    constraints: Tuple[str, ...] = Field((), description="'<metric> <= <number>' / '>=': feasibility for the sampler")
    repeats: int = Field(1, ge=1, description="seeds per suggested point (base seed, +1, ...): the sampler sees "
                         "their mean")
    seeds: Optional[SeedsSpec] = Field(None, description="grid: the seed axis generated, seeds until decided "
                                       "({min, max, step, until: decided, margin}; seeds.py)")
    reference: Optional[str] = Field(None, description="the row (a variant slug) every other row is compared "
                                     "with (Δ, paired test, MDD); None: each iRPE row against its config-matched "
                                     "no-RPE row. A reporting choice, not part of the study's identity")
    checkpoints: Literal["keep-all", "keep-best", "keep-none"] = Field(
        "keep-all", description="what a finished trial keeps: every checkpoint, only its best (the one tested), or "
        "none (sweep/disk.py; never what a running, queued or retryable trial needs)")

    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives(cls, v: Any) -> Any:
        return O.coerce_objectives(v)

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: Tuple[str, ...]) -> Tuple[str, ...]:
        parsed = [O.parse_constraint(c, f"study.constraints[{i}]").text for i, c in enumerate(v)]
        if len(set(parsed)) != len(parsed):
            raise ValueError(f"study.constraints={list(v)}: a constraint repeats")
        return tuple(parsed)

    @model_validator(mode="after")
    def _objectives_unique(self) -> "StudyConfig":
        O.check_objectives(self.objectives)
        return self

    @property
    def parsed_constraints(self) -> Tuple[O.Constraint, ...]:
        return tuple(O.parse_constraint(c) for c in self.constraints)

    @property
    def default_objectives(self) -> bool:
        """The single objective every study had before (best val acc1, maximised), no constraints, one seed: such
        a study's identity and fingerprint are what they were."""
        return self.objectives == O.DEFAULT_OBJECTIVES and not self.constraints and self.repeats == 1

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"study.name={v!r}: use letters, digits, '_', '.', '-' (it names a folder)")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else check_storage_url(v, "study.storage")


def check_storage_url(url: str, field: str = "--storage") -> str:
    """A storage URL of a scheme Optuna opens, else a clear error (the password shown as ``***``)."""
    if not re.match(r"^(sqlite|postgresql|mysql|journal)(\+\w+)?://", url):
        raise ValueError(f"{field}={redact(url)!r}: expected sqlite:///path.db, postgresql://user@host/db, "
                         "mysql://… or journal:///path/file.log")
    return url


class SweepConfig(_Frozen):
    study: StudyConfig
    base: str = Field(..., description="training config YAML, relative to the sweep file")
    overrides: Dict[str, Any] = Field(default_factory=dict, description="nested changes to the base config")
    space: Dict[str, S.ParamSpec]
    arms: Dict[str, Dict[str, Any]] = Field(default_factory=dict, description="named rows: name → nested changes "
                                            "to the base config, searched as space.arm: {choices: [names]}")
    workers: int = Field(1, ge=1, description="worker processes on this machine (one per GPU group on CUDA)")
    devices_per_worker: int = Field(1, ge=1, description="GPUs per worker (a trial's trainer.devices)")
    workers_per_device: int = Field(1, ge=1, description="workers sharing each GPU group: small models leave a "
                                    "GPU mostly idle (launch- and loader-bound), several trials fill it")
    out_dir: Optional[str] = Field(None, description="default results/sweeps/<study.name>")

    @model_validator(mode="before")
    @classmethod
    def _seed_axis(cls, data: Any) -> Any:
        """``study.seeds``: the seed axis is generated (``seed: {choices: [0 … max − 1]}``), never listed."""
        study = data.get("study") if isinstance(data, Mapping) else None
        seeds = study.get("seeds") if isinstance(study, Mapping) else getattr(study, "seeds", None)
        if seeds is None:
            return data
        space = dict(data.get("space") or {})
        if "seed" in space:
            raise ValueError("space.seed: study.seeds generates the seed axis (0 … max − 1); remove space.seed")
        spec = seeds if isinstance(seeds, SeedsSpec) else SeedsSpec(**seeds) if isinstance(seeds, Mapping) else None
        if spec is None:
            raise ValueError(f"study.seeds={seeds!r}: expected {{min, max, step, until: decided}}")
        return {**data, "space": {**space, "seed": {"choices": spec.seed_choices()}}}

    @model_validator(mode="after")
    def _space(self) -> "SweepConfig":
        if not self.space:
            raise ValueError("space: must search at least one field")
        st = self.study
        if st.seeds is not None:
            for field, value, need in (("sampler", st.sampler, "grid"), ("pruner", st.pruner, "none"),
                                       ("repeats", st.repeats, 1)):
                if value != need:
                    raise ValueError(f"study.{field}={value!r} with study.seeds: seeds until decided needs "
                                     f"study.{field}={need!r} (seeds.py says why)")
        S.check_derived(self.space)
        S.check_arms(self.space, self.arms)
        if self.study.sampler == "grid":
            ranged = [k for k, s in self.space.items() if not s.categorical and not s.derived]
            if ranged:
                raise ValueError(f"study.sampler='grid' needs choices for every field; space.{ranged[0]} is a "
                                 "range (give choices: [...], or use sampler tpe/random)")
        elif self.study.n_trials is None:
            raise ValueError(f"study.n_trials is required for sampler {self.study.sampler!r} "
                             "(only grid knows its size)")
        return self


class Sweep:
    """A loaded sweep: its validated config, the base training config (as a nested dict and flattened), and
    resolved paths. Built by :func:`load_sweep`; everything here has passed the checks."""

    def __init__(self, config: SweepConfig, base_config: TrainConfig, path: Optional[Path]):
        self.config = config
        self.path = path
        self.base_config = base_config  # the base YAML merged with the sweep's overrides, validated
        self.base = base_config.model_dump(mode="json")  # the same as a nested dict, for merging trial points
        self.base_flat = flatten(self.base)
        self.out_dir = Path(config.out_dir or Path("results/sweeps") / config.study.name)

    @property
    def storage_url(self) -> str:
        url = os.environ.get(STORAGE_ENV) or self.config.study.storage
        return url or f"sqlite:///{(self.out_dir / 'optuna.db').as_posix()}"

    def identity(self) -> Dict[str, Any]:
        """What must match for this sweep to join an existing study (:mod:`.extend`): the resolved base config
        (minus logging), the sampler and the pruner, and which fields are searched and how (``choices`` or the
        exact range). ``base_file`` and ``overrides`` ride along only to say where a difference came from.
        A grid's choices are *not* here: they may grow (new seeds, new methods) without a new study."""
        st = self.config.study
        fields = {k: ("choices" if s.categorical else v) for (k, s), v in
                  zip(self.config.space.items(), S.describe(self.config.space).values())}
        ident = {"base": without_logging(self.base_flat), "base_file": self.config.base,
                 "overrides": self.config.overrides, "sampler": [st.sampler, st.seed],
                 "pruner": [st.pruner, st.pruner_warmup_epochs], "fields": fields}
        if not st.default_objectives:  # NOTE: only then, so that older studies keep their identity
            ident.update(objectives=[[o.metric, o.direction] for o in st.objectives],
                         constraints=list(st.constraints), repeats=st.repeats)
        if st.seeds is not None:  # the declared looks: the design's α-spending depends on them
            ident["seeds"] = st.seeds.model_dump()
        if self.config.arms:  # what each named row trains
            ident["arms"] = self.config.arms
        return ident

    def fingerprint(self) -> str:
        """A short digest of :meth:`identity`'s must-match part (not the budget, workers, storage or a grid's
        choices, which may change when a study is resumed or extended)."""
        ident = self.identity()
        return digest({k: ident[k] for k in ("base", "sampler", "pruner", "fields", *IDENTITY_EXTRA)
                       if k in ident}, 16)

    def legacy_fingerprint(self, space: Mapping[str, Any]) -> str:
        """The fingerprint older versions stored (base, ``space`` as :func:`~.space.describe` wrote it, sampler,
        pruner): lets a study made before :meth:`identity` existed be joined and extended."""
        st = self.config.study
        return digest({"base": without_logging(self.base_flat), "space": dict(space),
                       "sampler": [st.sampler, st.seed], "pruner": [st.pruner, st.pruner_warmup_epochs]}, 16)

    def choices(self) -> Dict[str, list]:
        """``{field: [encoded choices]}`` of the categorical fields, in the file's order."""
        return {k: list(s.encoded_choices()) for k, s in self.config.space.items() if s.categorical}

    def with_choices(self, choices: Mapping[str, Any]) -> "Sweep":
        """This sweep with the categorical fields' choices replaced (same fields, same base): the choice lists
        in the order a study pinned them, for sampling (Optuna compares a categorical's choices as a tuple)."""
        space = {k: (s.model_copy(update={"choices": tuple(choices[k])}) if s.categorical and k in choices else s)
                 for k, s in self.config.space.items()}
        return Sweep(self.config.model_copy(update={"space": space}), self.base_config, self.path)

    def trial_config(self, point: Mapping[str, Any], **sections: Mapping[str, Any]) -> TrainConfig:
        """The training config of one point of the space, plus nested ``sections`` changes (``log={...}``,
        ``trainer={...}``), validated as a whole (``ValueError`` names the problem)."""
        base = merge(self.base, self.config.arms[point[S.ARM]]) if S.ARM in point else self.base
        point = {k: v for k, v in point.items() if k != S.ARM}
        m = self.base_config.model
        over = S.to_overrides(point, m.rpe and m.rpe.model_dump(), m.pos and m.pos.model_dump())
        config = build_config(merge(merge(base, over), sections), source="trial config")
        if not config.data.has_validation:  # NOTE: the objective and the pruner read validation, never test
            raise ValueError(f"data.val_fraction={config.data.val_fraction:g}: a sweep chooses on validation and "
                             "never on test; give the base config a validation split (val_fraction > 0)")
        return config


def without_logging(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """A flattened training config without ``log.*``: W&B identity and tags do not change what is trained."""
    return {k: v for k, v in flat.items() if not k.startswith("log.")}


def digest(data: Any, length: int) -> str:
    """A short stable hash of plain data (sorted JSON), for config keys and sweep fingerprints."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:length]


def _check_fields(space: Mapping[str, S.ParamSpec]) -> None:
    """Every searched name is a field of the training config (or the α:β:γ pseudo-field)."""
    for name in space:
        if name in (S.ABG, S.ARM):
            continue
        node: Any = TrainConfig
        for part in name.split("."):
            fields = getattr(node, "model_fields", None)
            if fields is None or part not in fields:
                allowed = sorted(fields) if fields else []
                raise ValueError(f"space.{name}: unknown field {part!r}; allowed here: {allowed}")
            node = submodel(fields[part].annotation)


def _check_choices(sweep: Sweep) -> int:
    """Each choice (range end) must be valid in at least one legal combination; returns the number of valid
    combinations checked. The error names the field, the value and the config's own reason."""
    good: Dict[str, set] = {k: set() for k in sweep.config.space}
    reasons: Dict[tuple, str] = {}
    n_valid = 0
    for point in S.points(sweep.config.space, sweep.base_flat, limit=_CHECK_LIMIT):
        try:
            sweep.trial_config(point)
        except ValueError as e:
            for k, v in point.items():
                reasons.setdefault((k, v), str(e).split("\n", 1)[-1].strip())
            continue
        n_valid += 1
        for k, v in point.items():
            good[k].add(v)
    for name, spec in sweep.config.space.items():
        for v in spec.endpoints():
            if v not in good[name] and (name, v) in reasons:
                allowed = sorted(map(str, good[name])) or "none of the choices"
                raise ValueError(f"space.{name}={v!r} gives no valid training config in this sweep: "
                                 f"{reasons[(name, v)]} (valid here: {allowed})")
    if n_valid == 0:
        why = next(iter(reasons.values()), None)
        raise ValueError("the search space has no valid combination with this base config"
                         + (f": {why}" if why else ""))
    return n_valid


def _dotted_space(overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """``--set space.model.rpe.method.choices=[none,product]`` arrives split at every dot; space keys are
    themselves dotted, so rejoin everything between ``space`` and the spec attribute (``choices``, ``low`` …).
    A spec attribute's value is kept whole: ``space.model.rpe.ratio.values='{product: 1.9}'`` is a mapping."""
    if not isinstance(overrides.get("space"), Mapping):
        return dict(overrides)
    space: Dict[str, Dict[str, Any]] = {}

    def walk(node: Mapping[str, Any], field: str) -> None:
        for key, value in node.items():
            if field and key in S.ParamSpec.model_fields:
                space.setdefault(field, {})[key] = value
            elif isinstance(value, Mapping) and value:
                walk(value, f"{field}.{key}" if field else key)
            else:
                raise ValueError(f"--set space.{field + '.' if field else ''}{key}: expected "
                                 f"space.<field>.<{'|'.join(S.ParamSpec.model_fields)}>")

    walk(overrides["space"], "")
    return {**overrides, "space": space}


def build_sweep(data: Mapping[str, Any], path: Optional[Path] = None,
                overrides: Optional[Mapping[str, Any]] = None) -> Sweep:
    """Validate a sweep (nested dict plus nested ``overrides`` of the sweep file itself) → :class:`Sweep`."""
    from ..train.config import load_config

    merged = merge(dict(data), _dotted_space(overrides or {}))
    try:
        cfg = SweepConfig(**merged)
    except ValidationError as e:
        raise ValueError(redact(format_errors(e, f"sweep {path or ''}".strip(), root=SweepConfig))) from None
    SM.check_study(cfg)  # the sampler against the objectives, constraints, pruning and repeats
    base_path = Path(cfg.base)
    if path is not None and not base_path.is_absolute():
        base_path = path.parent / base_path
    _check_fields(cfg.space)
    sweep = Sweep(cfg, load_config(base_path, cfg.overrides), path)  # validates base + overrides
    SM.check_space(sweep)
    _check_choices(sweep)
    return sweep


def load_sweep(path: str | Path, overrides: Optional[Mapping[str, Any]] = None) -> Sweep:
    return build_sweep(read_yaml(path, "sweep file"), Path(path), overrides)
