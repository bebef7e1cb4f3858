"""Index functions: map a 1-D relative offset (or distance) to an integer bucket offset.

Paper §3.2 (Wu et al., ICCV 2021):

* ``clip`` — Shaw's clip function, Eq. (9): ``h(x) = max(-β, min(β, x))``.
* ``piecewise`` — Eq. (18), with ``[·]`` = round and ``sign(0) = 0``::

      g(x) = [x]                                                  if |x| <= α
      g(x) = sign(x) · min(β, [α + ln(|x|/α) / ln(γ/α) · (β - α)])  if |x| >  α

Both return integers in ``[-int(β), int(β)]``: the mappings in :mod:`irpe_bench.rpe.mapping` shift them
by ``int(β)`` to get non-negative bucket ids, exactly as the official code does.

Every index function has the signature ``fn(x, alpha, beta, gamma) -> LongTensor`` so that the mappings
can call any of them; functions that do not use a coefficient ignore it.

NOTE: rounding follows the official implementation bit for bit: the far branch is evaluated in float32
(``torch.log`` of ``|x| / α``), rounded half-to-even by ``torch.round``, clipped at the *float* β and
then truncated towards zero by the cast to int64, so ``min(β, ·)`` acts as ``min(int(β), ·)``.
Evaluating Eq. (18) in float64 would move some boundary offsets to a neighbouring bucket and break
compatibility with the released checkpoints.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .registry import Registry

IndexFunction = Callable[[torch.Tensor, float, float, float], torch.Tensor]

INDEX_FUNCTIONS = Registry("index function")
register_index = INDEX_FUNCTIONS.register
get_index: Callable[[str], IndexFunction] = INDEX_FUNCTIONS.lookup


def _round_to_float(x: torch.Tensor) -> torch.Tensor:
    """``[x]`` in float32: integer inputs pass through unchanged, float inputs are rounded half-to-even."""
    return x.float() if not x.is_floating_point() else x.round()


@register_index("piecewise")
@torch.no_grad()
def piecewise(x: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """Eq. (18): exact for ``|x| <= α``, logarithmic beyond, saturating at ``±int(β)``.

    Args:
        x: relative offsets or distances, any shape, integer or float dtype.
        alpha, beta, gamma: coefficients with ``0 < α``, ``α < γ`` (validated by ``RPEConfig``).
    Returns:
        int64 tensor of the same shape with values in ``[-int(β), int(β)]``.
    """
    x_abs = x.abs()
    near = x_abs <= alpha
    # NOTE: same operation order and dtype (float32) as the official code; see the module docstring.
    far = (alpha + torch.log(x_abs.float() / alpha) / math.log(gamma / alpha) * (beta - alpha)).round()
    far = torch.sign(x).float() * far.clip(max=beta)
    b = int(beta)
    # NOTE: the final clamp only matters when float32(β) rounds up to int(β) + 1 (e.g. β = 3.9999999999999964):
    # the official code then emits an id one past its table. Everywhere else it changes nothing.
    return torch.where(near, _round_to_float(x), far).to(torch.long).clamp(-b, b)


@register_index("clip")
@torch.no_grad()
def clip(x: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """Eq. (9), Shaw et al.: ``max(-β, min(β, [x]))``; α and γ are unused.

    The official iRPE code has no clip option; the paper's Table 3 and the "Shaw's" rows of Table 5 use it
    with the product mapping. β is truncated to ``int(β)`` like every bucket range in the official code.
    """
    b = float(int(beta))
    return _round_to_float(x).clamp(-b, b).to(torch.long)
