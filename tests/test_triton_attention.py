"""The Triton attention-with-bias kernel against the plain formula in float64, forward and every gradient.

Without a GPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, fp16: the interpreter's
bf16 matmul is broken in triton 3.8, fp16 takes the same code path), in a subprocess because the switch is read
when the kernels are defined: :func:`compare` runs there, in the one interpreter process of
``tests/test_triton_irpe.py`` (its start-up costs more than the cases). On CUDA (``gpu`` marker) it runs
compiled, in bf16, at DeiT's shapes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from irpe_bench.models import triton_attention as ta

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(ta.triton is None, reason="triton is not installed")

#: (B, H, L, D, bias shape): 65 and 70 tokens cross a 64-block edge; broadcast biases as bias mode makes them.
CASES = [(2, 3, 17, 16, "full"), (1, 2, 70, 32, "heads"), (2, 1, 65, 64, "batch"), (1, 2, 20, 128, "shared")]


def _bias_shape(B, H, L, kind):
    return {"full": (B, H, L, L), "heads": (1, H, L, L), "batch": (B, 1, L, L), "shared": (1, 1, L, L)}[kind]


def compare(device: str, dtype: torch.dtype, cases=CASES, bias_grad: bool = True):
    """Max relative error (‖got − want‖ / ‖want‖) of o, dq, dk, dv, dbias over the cases, vs float64."""
    worst = {}
    gen = torch.Generator().manual_seed(0)
    for B, H, L, D, kind in cases:
        q, k, v = (torch.randn(B, H, L, D, generator=gen).to(device, dtype).requires_grad_() for _ in range(3))
        bias = (0.5 * torch.randn(_bias_shape(B, H, L, kind), generator=gen)).to(device, dtype)
        bias.requires_grad_(bias_grad)
        go = torch.randn(B, H, L, D, generator=gen).to(device, dtype)
        out = ta.attention_with_bias(q, k, v, bias, scale=D ** -0.5)
        inputs = [q, k, v] + ([bias] if bias_grad else [])
        got = [out, *torch.autograd.grad(out, inputs, go)]
        x64 = [t.detach().double().requires_grad_() for t in inputs]
        b64 = x64[3] if bias_grad else bias.double()
        ref = ((x64[0] @ x64[1].transpose(-1, -2)) * D ** -0.5 + b64).softmax(-1) @ x64[2]
        want = [ref, *torch.autograd.grad(ref, x64, go.double())]
        for name, a, b in zip(["o", "dq", "dk", "dv", "dbias"], got, want):
            assert a.shape == b.shape and a.dtype == dtype and torch.isfinite(a).all(), name
            err = float((a.detach().double() - b.detach()).norm() / b.detach().norm())
            worst[name] = max(worst.get(name, 0.0), err)
    return worst


def _interpreted(snippet: str) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bad_shapes_are_refused_with_the_shapes():
    q = torch.zeros(1, 2, 5, 16)
    with pytest.raises(ValueError, match=r"bias \(1, 2, 5, 4\)"):
        ta.attention_with_bias(q, q, q, torch.zeros(1, 2, 5, 4))
    q = torch.zeros(1, 2, 5, 24)
    with pytest.raises(ValueError, match=r"head_dim 24 .*allowed: \(16, 32, 64, 128\)"):
        ta.attention_with_bias(q, q, q, torch.zeros(1, 2, 5, 5))


def test_available_only_where_it_can_run():
    q = torch.zeros(1, 2, 5, 16, dtype=torch.bfloat16)
    assert not ta.available(q, torch.zeros(1, 1, 5, 5, dtype=torch.bfloat16))  # CPU
    if torch.cuda.is_available():
        qc = q.cuda()
        assert ta.available(qc, torch.zeros(1, 1, 5, 5, dtype=torch.bfloat16, device="cuda"))
        assert not ta.available(qc.float(), torch.zeros(1, 1, 5, 5, device="cuda"))  # fp32: SDPA keeps it
        assert not ta.available(qc, torch.zeros(1, 1, 1, 5, dtype=torch.bfloat16, device="cuda"))  # key mask


@pytest.mark.gpu
def test_cuda_bf16_kernel_matches_float64_formula_at_deit_shapes():
    cases = CASES + [(4, 3, 197, 64, "full"), (2, 6, 197, 64, "heads"), (3, 3, 65, 64, "shared")]
    worst = compare("cuda", torch.bfloat16, cases)
    for name, err in worst.items():
        assert err < 2e-2, (name, err)  # bf16 operands: ~4e-3 expected
