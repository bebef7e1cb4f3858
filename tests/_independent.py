"""Independent reference computations for tests of the statistics (not the package's code paths)."""
from __future__ import annotations

from typing import List, Sequence


def holm(ps: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment written out: sorted p_(j) × (m - j + 1), running max, capped at 1."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adj, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adj[i] = running
    return adj
