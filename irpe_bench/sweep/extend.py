"""Joining an existing study: what must match, and how a grid study grows by new choices.

A sweep file joins the study of the same name when its trials stay comparable with the study's:

* **must match** (:meth:`~.config.Sweep.identity`): the resolved base config (the base file merged with the
  sweep's ``overrides``; logging aside), the sampler and its seed, the pruner, the objectives, constraints
  and repeats (absent from older studies' identities: the single default objective), and the searched fields with
  their kinds (``choices``, or a range with the same bounds). Anything else is refused before any work, and
  the message lists what differs (``trainer.max_epochs: 2 -> 3``) and how to proceed (a new ``study.name``).
  A **new searched field** is refused too: the old trials ran with its base value and never drew it, so the
  study would mix trials that searched it with trials that did not. A field no longer searched is refused
  for the mirror reason.
* **may grow** (grid studies only): the choices of a searched field — more seeds, another method. The study
  keeps its trials and its name; only the grid points not yet present run (:func:`missing_points`: present
  means a trial that counts towards the budget — finished, running, queued, or failed for good; a failed
  point is not re-run by extending), and the budget becomes one trial per point of the grid (plus the kept
  trials of removed choices, below). The study's ``sweep`` attribute takes the extended file's space, file
  and command, with a line per extension under ``extended``; the change is logged.
* **removed choices** are allowed and **nothing is deleted**: their trials stay in the storage and in the
  leaderboard (a pure function of the storage), and no new trial is started for them. To report without
  them, run the smaller grid under a new study name.
* **reordered choices** are the same sweep.
* Other samplers (TPE, random) learn from the space they sampled: their choices and ranges must match.

Optuna pins a categorical parameter's choice list for a study's life ("CategoricalDistribution does not
support dynamic value space": each new trial's choices are compared, as a tuple, with the first stored
one). So the study keeps its *pinned* choice lists (user attribute :data:`CHOICES_ATTR`); an extension
appends the new choices at the end of each list — the stored index of every old value is unchanged — and
rewrites the stored distributions of the study's parameters to the extended lists (RDB storages: SQLite,
PostgreSQL, MySQL; a journal file cannot be rewritten, so a journal study refuses new choices). Trials sample
with the pinned lists (:func:`pinned_sweep`); their values, states and attributes are never touched.

NOTE: extend from one process (``irpe-bench sweep`` does it before it launches its workers); a second
machine that joins while the first is still enqueuing the new points may enqueue some twice, and the
budget then discards the later copy untrained (:mod:`.budget`).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import optuna
from optuna.distributions import CategoricalDistribution

from . import space as S
from .allotted import grid_params
from .budget import counted_points
from .config import Sweep, redact

log = logging.getLogger(__name__)
#: user attribute: :meth:`Sweep.identity` of the sweep that created the study
IDENTITY_ATTR = "sweep_identity"
#: user attribute: ``{field: [choices]}`` in the order Optuna pinned them (old choices first)
CHOICES_ATTR = "sweep_choices"
_SHOWN = 6  # differing config keys named in a refusal


class Mismatch(ValueError):
    """The sweep cannot join the study (module docstring): the message says what differs and what to do."""


def _show(v: Any) -> str:
    return "(absent)" if v is _ABSENT else repr(v)


_ABSENT = object()


def differences(old: Mapping[str, Any], new: Mapping[str, Any], old_choices: Mapping[str, List[Any]],
                new_choices: Mapping[str, List[Any]]) -> List[str]:
    """What differs between a study's identity and a sweep's, in words (empty: the sweep may join)."""
    out: List[str] = []
    if old.get("overrides") != new.get("overrides"):
        out.append(f"overrides changed: {old.get('overrides')} -> {new.get('overrides')}")
    ob, nb = old.get("base", {}), new.get("base", {})
    changed = sorted(k for k in set(ob) | set(nb) if ob.get(k, _ABSENT) != nb.get(k, _ABSENT))
    if changed:
        shown = ", ".join(f"{k}: {_show(ob.get(k, _ABSENT))} -> {_show(nb.get(k, _ABSENT))}"
                          for k in changed[:_SHOWN])
        more = f" and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
        out.append(f"the resolved training config (base {new.get('base_file')!r} + overrides) differs: "
                   f"{shown}{more}")
    for key, what in (("sampler", "study.sampler/seed"), ("pruner", "study.pruner/pruner_warmup_epochs")):
        if list(old.get(key) or []) != list(new.get(key) or []):
            out.append(f"{what} changed: {old.get(key)} -> {new.get(key)}")
    defaults = {"objectives": [["val_acc1", "maximize"]], "constraints": [], "repeats": 1,  # when absent
                "seeds": None}
    for key, default in defaults.items():
        if old.get(key, default) != new.get(key, default):
            out.append(f"study.{key} changed: {old.get(key, default)} -> {new.get(key, default)}")
    of, nf = old.get("fields", {}), new.get("fields", {})
    for name in nf:
        if name not in of:
            out.append(f"space.{name} is a new searched field: the study's trials never drew it (they ran with "
                       f"its base value), so old and new trials would differ in more than the new choices")
    for name in of:
        if name not in nf:
            out.append(f"space.{name} is no longer searched: the study's trials varied it")
        elif of[name] != nf[name]:
            out.append(f"space.{name} changed kind or range: {of[name]} -> {nf[name]}")
    if (new.get("sampler") or ["grid"])[0] != "grid":
        for name in nf:
            if name in of and name in old_choices and set(map(repr, old_choices[name])) != \
                    set(map(repr, new_choices.get(name, []))):
                out.append(f"space.{name} choices changed: {old_choices[name]} -> {new_choices.get(name)} (only a "
                           "grid study takes new choices; a TPE/random study learnt from the old space)")
    return out


def refuse(sweep: Sweep, study: optuna.Study, diffs: List[str]) -> Mismatch:
    stored = study.user_attrs.get("sweep") or {}
    return Mismatch(
        f"study {sweep.config.study.name!r} in {redact(sweep.storage_url)} was created from a different sweep "
        f"(file {stored.get('sweep_file')!r}): " + "; ".join(diffs) + ". Its trials would not be comparable "
        "with new ones. To run this sweep, give it a new study name (--set study.name=NEW, or study.name in the "
        "file) or delete the old study. (A grid study does take new choices of the fields it searches, e.g. "
        "more seeds or another method: those join it and only the new points run.)")


def stored_state(sweep: Sweep, study: optuna.Study) -> Tuple[Optional[Dict[str, Any]], Dict[str, List[Any]]]:
    """(identity, pinned choices) of an existing study. Studies made before identities were stored carry a
    fingerprint of base + space + sampler + pruner: when it matches this sweep with the study's own space,
    their identity is this sweep's and their pinned choices are that space's lists; otherwise identity None
    (differences unknown). A study with neither (made by a caller that passed no meta): this sweep's."""
    attrs = study.user_attrs
    meta = attrs.get("sweep") or {}
    if IDENTITY_ATTR in attrs:
        return attrs[IDENTITY_ATTR], dict(attrs.get(CHOICES_ATTR) or sweep.choices())
    space = meta.get("space")
    if meta.get("fingerprint") and isinstance(space, dict):
        if meta["fingerprint"] not in (sweep.legacy_fingerprint(space), sweep.fingerprint()):
            return None, {}
        return sweep.identity(), {k: list(v) for k, v in space.items() if isinstance(v, list)}
    return sweep.identity(), sweep.choices()


def pinned_choices(stored: Mapping[str, List[Any]], sweep: Sweep) -> Dict[str, List[Any]]:
    """The study's lists with this sweep's new choices appended (old ones keep their place)."""
    out = {k: list(v) for k, v in stored.items()}
    for k, choices in sweep.choices().items():
        have = out.setdefault(k, [])
        have.extend(c for c in choices if c not in have)
    return out


def pinned_sweep(sweep: Sweep, study: optuna.Study) -> Sweep:
    """``sweep`` with the study's pinned choice lists: what a trial of this study must sample with."""
    return sweep.with_choices(pinned_choices(study.user_attrs.get(CHOICES_ATTR) or {}, sweep))


def distributions(sweep: Sweep) -> Dict[str, CategoricalDistribution]:
    """Optuna parameter name → the categorical distribution its trials sample with (``model.rpe.on@bias``
    included), read off the rules of :mod:`.space` over every grid point."""
    space, base = sweep.config.space, sweep.base_flat
    out: Dict[str, CategoricalDistribution] = {}
    for point in S.points(space, base):
        sampled: Dict[str, Any] = {}
        for name in S.ordered(space):
            r = S.rule(name, space[name], sampled, base)
            if r is None or name not in point:
                continue
            sampled[name] = point[name]
            if r[1].categorical:
                out.setdefault(r[0], CategoricalDistribution(list(r[1].encoded_choices())))
    return out


def missing_points(sweep: Sweep, study: optuna.Study) -> List[Dict[str, Any]]:
    """The grid's points (as Optuna parameters) that no counting trial of the study has (seeds until decided:
    of the seeds allotted so far, :func:`.allotted.grid_params`)."""
    present = counted_points(study)
    return [p for p in grid_params(sweep, study) if p not in present]


def _rewrite(storage: Any, study: optuna.Study, new: Mapping[str, CategoricalDistribution]) -> List[str]:
    """Give every stored parameter of the study whose choice list grew the extended distribution; returns
    the parameter names rewritten. Refuses (``Mismatch``) where an old list is not a prefix of the new one
    (the stored indices would change meaning) or the storage cannot be rewritten."""
    old: Dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        for pname, dist in t.distributions.items():
            old.setdefault(pname, dist)
    grown = {}
    for pname, dist in old.items():
        if pname not in new or not isinstance(dist, CategoricalDistribution) or dist == new[pname]:
            continue
        if tuple(new[pname].choices[:len(dist.choices)]) != tuple(dist.choices):
            raise Mismatch(f"space.{pname}: the study's trials sampled choices {list(dist.choices)}, which are not "
                           f"the start of the extended list {list(new[pname].choices)}; use a new study name")
        grown[pname] = new[pname]
    if not grown:
        return []
    if not isinstance(storage, optuna.storages.RDBStorage):
        raise Mismatch(f"study {study.study_name!r}: new choices for {sorted(grown)} need the stored choice lists "
                       f"rewritten, which a {type(storage).__name__} cannot do; run the extended grid under a new "
                       "study name (or keep the study on SQLite/PostgreSQL)")
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    # NOTE: Optuna has no public call for this; only the distribution's JSON changes, never a value (old
    # choices keep their index), and in one transaction.
    with _create_scoped_session(storage.scoped_session, True) as session:
        for pname, dist in grown.items():
            rows = (session.query(models.TrialParamModel).join(models.TrialModel)
                    .filter(models.TrialModel.study_id == study._study_id)
                    .filter(models.TrialParamModel.param_name == pname).all())
            for row in rows:
                row.distribution_json = distribution_to_json(dist)
    return sorted(grown)


def extend(sweep: Sweep, study: optuna.Study, storage: Any, meta: Mapping[str, Any],
           stored_choices: Mapping[str, List[Any]], reload) -> optuna.Study:
    """Grow a grid study to this sweep's grid (module docstring); returns the study (reloaded when its stored
    distributions were rewritten, so no cache holds the old ones). Idempotent: run again, it does nothing."""
    pinned = pinned_choices(stored_choices, sweep)
    current = sweep.choices()
    added = {k: [c for c in v if c not in stored_choices.get(k, [])] for k, v in current.items()}
    removed = {k: [c for c in v if c not in current.get(k, [])] for k, v in stored_choices.items()}
    added, removed = {k: v for k, v in added.items() if v}, {k: v for k, v in removed.items() if v}
    rewritten = _rewrite(storage, study, distributions(sweep.with_choices(pinned)))
    if rewritten:
        study = reload()
    if pinned != dict(stored_choices):
        study.set_user_attr(CHOICES_ATTR, pinned)
    todo = missing_points(sweep, study)
    for params in todo:
        study.enqueue_trial(params, skip_if_exists=True)
    if not (todo or added or removed):
        return study
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    line = (f"{when}: +{len(todo)} grid point(s)" + (f", new choices {added}" if added else "")
            + (f", choices no longer in the file (trials kept) {removed}" if removed else ""))
    stored_meta = dict(study.user_attrs.get("sweep") or {})
    keep = ("name", "created", "storage")
    updated = {**stored_meta, **{k: v for k, v in meta.items() if k not in keep},
               "space": S.describe(sweep.config.space), "extended": [*stored_meta.get("extended", []), line]}
    study.set_user_attr("sweep", updated)
    log.info("study %s extended: %s", sweep.config.study.name, line)
    return study


__all__ = ["Mismatch", "differences", "extend", "missing_points", "pinned_sweep", "stored_state",
           "IDENTITY_ATTR", "CHOICES_ATTR"]
