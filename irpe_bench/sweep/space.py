"""The search space: the only place that calls ``trial.suggest_*``, and the rules that keep it legal.

A space is an ordered mapping of dotted training-config fields (``model.rpe.method``, ``optim.lr``, ``seed``) to
a :class:`ParamSpec` (``choices`` or a ``low``/``high`` range). Sampling is define-by-run, so the iRPE rules
that make some combinations meaningless are applied *before* a value is drawn and illegal combinations are
never sampled:

* ``model.rpe.method: none`` is the no-RPE baseline: the other ``model.rpe.*`` parameters are not sampled;
* bias mode exists only on q and k (paper Eq. 14): under ``mode=bias`` the attachment is drawn from the
  choices without ``v``, under its own parameter name (``model.rpe.on@bias``), because Optuna pins a
  parameter's choice set for the life of a study;
* ``model.pos.family`` chooses another position-encoding family (``none``: no ``model.pos``): its other
  ``model.pos.*`` fields are drawn only under a family, and under a family that takes over the attention layer
  (RoPE, the bias tables) no ``model.rpe.*`` field is drawn and ``model.rpe`` is null. So
  ``model.pos.family: [none, rope_axial, rpb]`` × ``model.rpe.method: [none, product]`` is four rows: no
  relative encoding, iRPE, RoPE, the bias table.

The drivers of those rules (``family``, ``method``, then ``mode``) are sampled first whatever their order.
Optuna's categorical choices must be scalars, so ``layers`` choices travel as strings (``"all"``, ``"0,1"``),
and the paper's α:β:γ triples as ``model.rpe.alpha_beta_gamma: ["1.9:3.8:15.2", "2.5:5:20"]``.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from pydantic import BaseModel, ConfigDict, model_validator

NO_RPE = "none"
#: pseudo-field: an α:β:γ triple as one categorical choice ("2.5:5:20"), split into alpha/beta/gamma
ABG = "model.rpe.alpha_beta_gamma"
FAMILY = "model.pos.family"
#: pseudo-field: one of the sweep's named rows (``arms``), each a nested change of the base config
ARM = "arm"
_DRIVERS = (FAMILY, "model.rpe.method", "model.rpe.mode")
Scalar = Union[str, int, float, bool, None]


class ParamSpec(BaseModel):
    """One searched field: ``choices`` (categorical, any scalars; ``layers`` may list lists), a numeric
    range ``low``..``high`` (``log`` scale, ``step``; ``int: true`` for integers), or a value that follows
    from another searched field: ``given: model.rpe.method, values: {euclidean: 10.8, product: 1.02}``.

    A ``given`` field is not an Optuna parameter (nothing is sampled for it, so no sampler chases it and a
    grid does not multiply by it): it sets a field per choice of its driver, e.g. the paper's per-mapping
    bucket choices of Table 1 in one grid over the mappings."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    choices: Optional[Tuple[Any, ...]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    int: bool = False
    given: Optional[str] = None
    values: Optional[Dict[str, Any]] = None

    @model_validator(mode="after")
    def _one_kind(self) -> "ParamSpec":
        ranged = self.low is not None or self.high is not None
        if self.given is not None or self.values is not None:
            if self.given is None or not self.values or self.choices is not None or ranged:
                raise ValueError("a derived field needs given: <searched field> and values: {choice: value, ...}, "
                                 "and neither choices nor low/high")
            return self
        if (self.choices is None) == (not ranged):
            raise ValueError("give either choices: [...] or low/high (or given/values), not both and not neither")
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices: must not be empty")
            if len(set(map(_encode, self.choices))) != len(self.choices):
                raise ValueError(f"choices={list(self.choices)}: values repeat")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high")
        if not self.low < self.high:
            raise ValueError(f"low={self.low:g} must be < high={self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (given low={self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna)")
        return self

    @property
    def categorical(self) -> bool:
        return self.choices is not None

    @property
    def derived(self) -> bool:
        """Set from another field's value (``given``), never sampled."""
        return self.given is not None

    def value_for(self, driver: Any) -> Any:
        """The value under the driver's (encoded) value; keys are compared as text (YAML keys are strings)."""
        return _encode(self.values[str(driver)])

    def encoded_choices(self) -> Tuple[Scalar, ...]:
        return tuple(_encode(c) for c in self.choices or ())

    def endpoints(self) -> Tuple[Scalar, ...]:
        """Values that stand for the whole spec in validation: every choice, or a range's two ends."""
        if self.categorical:
            return self.encoded_choices()
        if self.derived:
            return tuple(dict.fromkeys(_encode(v) for v in self.values.values()))
        return (int(self.low), int(self.high)) if self.int else (self.low, self.high)


def _encode(v: Any) -> Optional[Scalar]:
    """A YAML choice as an Optuna-storable scalar: lists (layer indices) become ``"0,1,2"``; ``null`` stays None
    (Optuna stores None choices: ``optim.clip_grad: {choices: [null, 1.0]}`` draws a real None). Only the string
    ``none`` of ``model.rpe.method`` means the no-RPE baseline."""
    if isinstance(v, (list, tuple)):
        return ",".join(str(int(i)) for i in v)
    return v


def ordered(space: Mapping[str, ParamSpec]) -> List[str]:
    """Sampling order: the rule drivers first, then the file's order, derived (``given``) fields last."""
    first = [k for k in _DRIVERS if k in space]
    rest = [k for k in space if k not in _DRIVERS]
    return first + [k for k in rest if not space[k].derived] + [k for k in rest if space[k].derived]


def check_derived(space: Mapping[str, ParamSpec]) -> None:
    """Each ``given`` names a searched categorical field and has a value for every choice of it (the no-RPE
    ``none`` of ``model.rpe.method`` excepted for ``model.rpe.*`` fields, which it switches off)."""
    for name, spec in space.items():
        if not spec.derived:
            continue
        driver = space.get(spec.given)
        if driver is None or not driver.categorical:
            allowed = sorted(k for k, s in space.items() if s.categorical and k != name)
            raise ValueError(f"space.{name}.given={spec.given!r}: must name a searched field with choices; "
                             f"allowed here: {allowed}")
        needed = [c for c in driver.encoded_choices()
                  if not (spec.given == "model.rpe.method" and c == NO_RPE and name.startswith("model.rpe."))]
        missing = [c for c in needed if str(c) not in spec.values]
        extra = sorted(set(spec.values) - {str(c) for c in driver.encoded_choices()})
        if missing or extra:
            raise ValueError(f"space.{name}.values: keys {sorted(spec.values)} must be the choices of "
                             f"{spec.given} {[str(c) for c in needed]} (missing: {[str(c) for c in missing]}, "
                             f"unknown: {extra})")


def check_arms(space: Mapping[str, ParamSpec], arms: Mapping[str, Mapping[str, Any]]) -> None:
    """``space.arm`` names arms the sweep defines (and arms need it); no searched field is one an arm sets."""
    from ..train.config import flatten

    spec = space.get(ARM)
    if spec is None:
        if arms:
            raise ValueError(f"arms {sorted(arms)} are defined but not searched; add space.arm: {{choices: "
                             f"{sorted(arms)}}}")
        return
    if not spec.categorical:
        raise ValueError("space.arm: give choices: [names of arms]")
    unknown = [c for c in spec.encoded_choices() if c not in arms]
    if unknown:
        raise ValueError(f"space.arm.choices: {unknown[0]!r} is no arm of this sweep; allowed: {sorted(arms)}")
    for name, change in arms.items():
        if not isinstance(change, Mapping):
            raise ValueError(f"arms.{name}: expected a mapping of config sections, got {change!r}")
        for key in flatten(change) or {}:
            clash = [f for f in space if f != ARM and (f == key or f.startswith(key + ".") or key.startswith(f + "."))]
            if clash:
                raise ValueError(f"arms.{name} sets {key}, which space.{clash[0]} also searches; set it in one place")


def _effective(name: str, sampled: Mapping[str, Any], base: Mapping[str, Any]) -> Any:
    return sampled[name] if name in sampled else base.get(name)


def rule(name: str, spec: ParamSpec, sampled: Mapping[str, Any], base: Mapping[str, Any]
         ) -> Optional[Tuple[str, ParamSpec]]:
    """The (Optuna parameter name, spec) under which ``name`` is drawn given the values drawn so far, or
    ``None`` when it does not apply. ``base``: the flattened base config (for fields not searched)."""
    family = _effective(FAMILY, sampled, base)
    if name.startswith("model.pos.") and name != FAMILY and family in (NO_RPE, None):
        return None  # no other family: its fields mean nothing
    if name.startswith("model.rpe.") and takes_attention(family):
        return None  # RoPE or a bias table holds the attention layers: no iRPE drawn
    method = _effective("model.rpe.method", sampled, base)
    if name.startswith("model.rpe.") and name != "model.rpe.method" and (method == NO_RPE or method is None):
        return None  # no RPE: its fields mean nothing
    if spec.derived and spec.given not in sampled:
        return None  # its driver did not apply (e.g. no RPE): nothing to set
    if name == "model.rpe.on" and spec.categorical and _effective("model.rpe.mode", sampled, base) == "bias":
        allowed = tuple(c for c in spec.encoded_choices() if "v" not in str(c))
        if not allowed:
            return None  # nothing legal: keep the base value, the config check reports it
        return f"{name}@bias", spec.model_copy(update={"choices": allowed})
    return name, spec


def takes_attention(family: Any) -> bool:
    """Whether ``family`` (a ``model.pos.family`` value) replaces the attention layers, leaving no room for iRPE."""
    if family in (NO_RPE, None):
        return False
    from ..pos.families import FAMILIES

    return FAMILIES.lookup(str(family)).per_attention


def suggest(trial, space: Mapping[str, ParamSpec], base: Mapping[str, Any]) -> Dict[str, Any]:
    """Draw one point: ``{field: value}`` for the fields that apply (define-by-run, see module docstring)."""
    sampled: Dict[str, Any] = {}
    for name in ordered(space):
        r = rule(name, space[name], sampled, base)
        if r is None:
            continue
        pname, spec = r
        if spec.derived:
            sampled[name] = spec.value_for(sampled[spec.given])
        elif spec.categorical:
            sampled[name] = trial.suggest_categorical(pname, list(spec.encoded_choices()))
        elif spec.int:
            sampled[name] = trial.suggest_int(pname, int(spec.low), int(spec.high), log=spec.log,
                                              step=int(spec.step or 1))
        else:
            sampled[name] = trial.suggest_float(pname, spec.low, spec.high, log=spec.log, step=spec.step)
    return sampled


def points(space: Mapping[str, ParamSpec], base: Mapping[str, Any], limit: Optional[int] = None
           ) -> Iterator[Dict[str, Any]]:
    """Every combination of :meth:`ParamSpec.endpoints` that the rules allow, without duplicates (the
    baseline once, not once per RPE choice): the grid sampler's points and the validation's cases."""
    seen = set()
    names = ordered(space)

    def walk(i: int, sampled: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        if i == len(names):
            key = tuple(sorted(sampled.items()))
            if key not in seen:
                seen.add(key)
                yield dict(sampled)
            return
        r = rule(names[i], space[names[i]], sampled, base)
        if r is None:
            yield from walk(i + 1, sampled)
            return
        values = (r[1].value_for(sampled[r[1].given]),) if r[1].derived else r[1].endpoints()
        for v in values:
            yield from walk(i + 1, {**sampled, names[i]: v})

    yield from itertools.islice(walk(0, {}), limit)


def optuna_params(space: Mapping[str, ParamSpec], point: Mapping[str, Any], base: Mapping[str, Any]
                  ) -> Dict[str, Any]:
    """A point as Optuna parameter names (``model.rpe.on@bias``), for ``study.enqueue_trial``."""
    out, sampled = {}, {}
    for name in ordered(space):
        r = rule(name, space[name], sampled, base)
        if r is None or name not in point:
            continue
        sampled[name] = point[name]
        if not r[1].derived:  # derived fields are no Optuna parameter
            out[r[0]] = point[name]
    return out


def _pos_overrides(pos: Dict[str, Any], base_pos: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The drawn ``model.pos.*`` fields as ``model.pos``: null for family ``none``; the base's other fields kept
    only under the base's own family (another family's options would not apply)."""
    family = pos.get("family", (base_pos or {}).get("family"))
    if family == NO_RPE:
        return None
    if family is None:
        raise ValueError("the sweep searches model.pos.* but neither it nor the base config names a family; search "
                         "model.pos.family too")
    same = bool(base_pos) and base_pos.get("family") == family
    kept = {k: v for k, v in base_pos.items() if v is not None} if same else {}
    drawn = {k: ([int(i) for i in v.split(",")] if k == "layers" and isinstance(v, str) and v != "all" else v)
             for k, v in pos.items()}
    return {**kept, **drawn, "family": family}


def to_overrides(point: Mapping[str, Any], base_rpe: Optional[Mapping[str, Any]],
                 base_pos: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Sampled ``{field: value}`` → nested config overrides.

    ``model.pos.family: none`` sets ``model.pos: null``, a family that takes over attention ``model.rpe: null``;
    ``method: none`` sets ``model.rpe: null``; a drawn ``ratio`` replaces the base's α/β/γ and a drawn triple
    replaces its ratio (``RPEConfig`` takes one or the other); ``layers: "0,1"`` becomes ``[0, 1]``."""
    out: Dict[str, Any] = {}
    rpe: Dict[str, Any] = {}
    pos: Dict[str, Any] = {}
    for name, value in point.items():
        if name.startswith("model.rpe."):
            rpe[name[len("model.rpe."):]] = value
            continue
        if name.startswith("model.pos."):
            pos[name[len("model.pos."):]] = value
            continue
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    if pos:
        out.setdefault("model", {})["pos"] = _pos_overrides(pos, base_pos)
        if takes_attention(pos.get("family")):
            out["model"]["rpe"] = None
            return out
    if rpe.get("method") == NO_RPE:
        out.setdefault("model", {})["rpe"] = None
        return out
    if "method" in rpe and rpe["method"] is None:
        raise ValueError("model.rpe.method=None: not a mapping method; the no-RPE baseline is the choice 'none'")
    if rpe:
        if base_rpe is None:
            raise ValueError("the sweep searches model.rpe.* but the base config has model.rpe: null; give the "
                             "base an iRPE config (or search model.rpe.method with a 'none' choice)")
        merged = dict(base_rpe)
        if "alpha_beta_gamma" in rpe:
            merged.update(zip(("alpha", "beta", "gamma"), parse_abg(rpe.pop("alpha_beta_gamma"))), ratio=None)
        if "ratio" in rpe:
            merged.update(alpha=None, beta=None, gamma=None)
        if isinstance(rpe.get("layers"), str) and rpe["layers"] != "all":
            rpe["layers"] = [int(i) for i in rpe["layers"].split(",")]
        merged.update(rpe)
        out.setdefault("model", {})["rpe"] = merged
    return out


def parse_abg(text: Any) -> Tuple[float, float, float]:
    """``"2.5:5:20"`` → (2.5, 5.0, 20.0); a clear error otherwise."""
    parts = str(text).split(":")
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{ABG}={text!r}: expected 'alpha:beta:gamma', e.g. '1.9:3.8:15.2'")
    return vals  # type: ignore[return-value]


def grid_size(space: Mapping[str, ParamSpec], base: Mapping[str, Any]) -> int:
    return sum(1 for _ in points(space, base))


def describe(space: Mapping[str, ParamSpec]) -> Dict[str, Any]:
    """The space as plain data (stored in the study, shown in the leaderboard header)."""
    return {k: (list(s.encoded_choices()) if s.categorical else
                {"given": s.given, "values": dict(s.values)} if s.derived else
                {"low": s.low, "high": s.high, "log": s.log, "step": s.step, "int": s.int})
            for k, s in space.items()}


def is_range(specs: Sequence[ParamSpec]) -> bool:
    return any(not s.categorical and not s.derived for s in specs)
