"""A seeds-until-decided study's looks, in the leaderboard's terms: per row its variant, its reference, where it
stopped and why, and the repeated CIs (level 1 − α per row; validation, which decided; test, which is reported) at
its last look.

The record is written by the sweep (``study.seeds``; :data:`irpe_bench.keys.SEQUENTIAL_ATTR`), keyed by grid
row (:func:`irpe_bench.keys.row_key`); here each row is named by the config key and variant its trials carry. The
ranking's fixed-n paired tests and Holm p ignore the looks (a row that stopped early was tested at several sample
sizes), so for such a study they are descriptive and these are the decisions (``docs/sweeps.md``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from optuna.trial import FrozenTrial

from .. import keys as K

#: the record's row status of a reference (never looked at: the other rows are compared with it)
BASELINE = "baseline"


def _names(trials: Sequence[FrozenTrial]) -> Dict[str, Dict[str, str]]:
    """row key → {config_key, variant} from the trials that ran it."""
    out: Dict[str, Dict[str, str]] = {}
    for t in trials:
        params = dict(t.system_attrs.get("fixed_params") or t.params)
        key, variant = t.user_attrs.get("config_key"), t.user_attrs.get("variant")
        if "seed" in params and key and variant:
            out.setdefault(K.row_key(params), {"config_key": key, "variant": variant})
    return out


def _look(entry: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    entry = entry or {}
    return {"n_pairs": entry.get("n_pairs"), "delta": entry.get("delta"), "ci": entry.get("ci"),
            "decision": entry.get("decision")}


def summarise(record: Mapping[str, Any], trials: Sequence[FrozenTrial]) -> Optional[Dict[str, Any]]:
    """The board's ``sequential`` section (None for a study without ``study.seeds``)."""
    if not record or not record.get("rows"):
        return None
    names = _names(trials)
    rows: List[Dict[str, Any]] = []
    for row, rec in sorted(record["rows"].items()):
        name = names.get(row, {})
        base = names.get(rec.get("baseline_row") or "", {})
        looks = rec.get("looks") or []
        last = looks[-1] if looks else None
        rows.append({"variant": name.get("variant", row), "config_key": name.get("config_key"),
                     "vs": base.get("variant"), "vs_key": base.get("config_key"), "status": rec.get("status"),
                     "seeds": rec.get("allotted"), "looks": [lk.get("n_seeds") for lk in looks],
                     "val": _look(last), "test": _look((last or {}).get("test"))})
    spec = dict(record.get("spec") or {})
    return {"method": record.get("method"), "spec": spec, "family": record.get("family"),
            "alpha_row": record.get("alpha_row"), "rows": rows}


__all__ = ["BASELINE", "summarise"]
