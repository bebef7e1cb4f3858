"""``relpos``: a procedurally generated task whose label is a *directed relative position* (numpy only).

Why it exists: the paper's claims are about how attention uses relative positions, and on the embedded digits
almost all of the signal is in the pixels, not in where they are. Here the pixels carry no label information at
all: every image holds one *anchor* glyph (a filled 3×3 square) and one *target* glyph (a hollow 3×3 ring) at
random pixel positions, the label is the compass direction from the anchor to the target in 8 sectors of 45°
(0 = east, counter-clockwise: 1 = north-east, 2 = north, … 7 = south-east). So

* a model with no position information (no RPE, no absolute positions: a bag of patches) sits near chance
  (12.5 %) unless both glyphs share a patch;
* an *undirected* 2D mapping (``euclidean``, ``quant``) sees only the distance between patches, not the sign of
  the offset, so it cannot tell east from west without absolute positions — the paper's directed-vs-undirected
  question made sharp;
* the label is translation invariant (the same offset anywhere gives the same label), which is what a relative
  encoding is built for, and absolute positions can learn it only by composing two absolute codes.

Positions are drawn at pixel resolution, not on the patch grid, so a glyph often straddles patches. Offsets within
``margin_deg`` of a sector boundary are redrawn (labels are unambiguous), and the two glyphs never overlap
(Chebyshev distance ≥ ``min_distance`` pixels). Glyph intensities and a little Gaussian pixel noise vary per image.
Everything is a pure function of ``(n, size, seed)``: the same call gives the same bytes on every machine.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

NUM_CLASSES = 8
GLYPH = 3  # glyph side in pixels
_ANCHOR = np.ones((GLYPH, GLYPH), dtype=np.float32)
_TARGET = np.ones((GLYPH, GLYPH), dtype=np.float32)
_TARGET[1, 1] = 0.0  # a ring: same size and ink as the square but for its centre, so only shape tells them apart


def direction_label(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Sector of the offset (dx right, dy *up*) in 8 sectors of 45° centred on east, counter-clockwise."""
    angle = np.degrees(np.arctan2(dy, dx)) % 360.0
    return (np.floor((angle + 22.5) / 45.0).astype(np.int64)) % NUM_CLASSES


def _boundary_distance_deg(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    angle = np.degrees(np.arctan2(dy, dx)) % 360.0
    r = (angle - 22.5) % 45.0
    return np.minimum(r, 45.0 - r)


def generate(n: int, size: int = 28, seed: int = 0, min_distance: int = 5, margin_deg: float = 5.0,
             noise: float = 12.0) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8, N × size × size, grey) and their labels (int64 in [0, 8)).

    Drawn in vectorised rounds: candidate (anchor, target) positions are drawn for every image still missing one,
    and those that violate the distance or boundary rule are drawn again, so the result depends only on the
    arguments."""
    if n < 1 or size < GLYPH + min_distance + 1:
        raise ValueError(f"relpos: n={n}, size={size}: need n ≥ 1 and size ≥ {GLYPH + min_distance + 1}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, size, n]))
    hi = size - GLYPH + 1  # top-left corners in [0, hi)
    pos = np.zeros((n, 4), dtype=np.int64)  # ay, ax, ty, tx (row, column of the top-left pixel)
    todo = np.arange(n)
    while todo.size:
        cand = rng.integers(0, hi, size=(todo.size, 4))
        dy = -(cand[:, 2] - cand[:, 0])  # rows grow downwards; "up" is positive
        dx = cand[:, 3] - cand[:, 1]
        ok = (np.maximum(np.abs(dx), np.abs(dy)) >= min_distance) & (_boundary_distance_deg(dx, dy) >= margin_deg)
        pos[todo[ok]] = cand[ok]
        todo = todo[~ok]
    labels = direction_label(pos[:, 3] - pos[:, 1], -(pos[:, 2] - pos[:, 0]))
    ink = rng.uniform(150.0, 255.0, size=(n, 2)).astype(np.float32)
    images = rng.normal(0.0, noise, size=(n, size, size)).astype(np.float32)
    for i, glyph in enumerate((_ANCHOR, _TARGET)):
        ys, xs = pos[:, 2 * i], pos[:, 2 * i + 1]
        for r in range(GLYPH):
            for c in range(GLYPH):
                images[np.arange(n), ys + r, xs + c] += glyph[r, c] * ink[:, i]
    return np.clip(np.round(images), 0, 255).astype(np.uint8), labels
