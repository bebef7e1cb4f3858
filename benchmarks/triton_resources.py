"""Registers, spills and shared memory of the fused iRPE kernels per tile config, compiled ahead of time for a GPU
architecture on any machine (no GPU needed: Triton's compiler and its bundled ptxas run on the CPU).

Why: the interpreter checks exactness but says nothing about how a kernel fits a GPU; register spills are the
first thing that makes a Triton kernel slow, and they can be read from ptxas without a device. This is how
:data:`irpe_bench.models.triton_irpe.CONFIGS` was chosen; it measures no time.

    python benchmarks/triton_resources.py [--variant k|qk|qkv|bias_k] [--config 32,32,8,2] [--head-dim 64] [--kp 64]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from irpe_bench.models import triton_irpe as ti

#: (K_MODE, Q_MODE, HAS_V) of each variant (the modes of :data:`irpe_bench.models.triton_irpe.MODES`)
VARIANTS = {"k": (1, 0, False), "qk": (1, 1, False), "qkv": (1, 1, True), "bias_k": (2, 0, False)}
#: Pointer arguments besides q, k, v, tables and offsets, per kernel; any other argument is an int (scale: fp32).
OUTPUTS = {"_fwd": dict(Out="o", LSE="f", PB="f"),
           "_bwd_dkdv": dict(DO="o", LSE="f", Delta="f", DK="o", DV="o", DZQ="f"),
           "_bwd_dq": dict(DO="o", LSE="f", Delta="f", DQ="o", DZK="f")}


def signature(fn, dtype: str, k_mode: int, constexprs: dict) -> dict:
    """Triton's type string of every argument of ``fn``: ``o`` = q's dtype, ``f`` = fp32."""
    pointers = {**{n: "o" for n in ("Q", "K", "V", "TK", "TQ", "TV")}, "OffK": "i32", "OffQ": "i32",
                **OUTPUTS[fn.__name__]}
    if k_mode == 2:
        pointers["TK"] = "f"  # bias tables are read as fp32
    kinds = {"o": f"*{dtype}", "f": "*fp32", "i32": "*i32"}
    return {n: "constexpr" if n in constexprs else kinds[pointers[n]] if n in pointers else
            "fp32" if n == "scale" else "i32" for n in fn.arg_names}


def compile_report(kernel, dtype: str, arch: int, config, constexprs: dict) -> str:
    """ptxas's register and spill line of one kernel compiled for ``sm_<arch>``, and its shared memory."""
    fn = kernel.fn if hasattr(kernel, "fn") else kernel  # NOTE: the autotuner wraps the jitted function
    m, n, warps, stages = config
    consts = dict(constexprs, BLOCK_M=m, BLOCK_N=n)
    src = ASTSource(fn=fn, signature=signature(fn, dtype, consts["K_MODE"], consts),
                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps,
                                                                                     num_stages=stages))
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(compiled.asm["ptx"])
        f.flush()
        out = subprocess.run([ptxas, f"-arch=sm_{arch}a", "-v", f.name, "-o", os.devnull], capture_output=True,
                             text=True, check=True).stderr
    lines = [re.sub(r"^ptxas info\s*:\s*", "", s.strip()) for s in out.splitlines() if "spill" in s or "Used" in s]
    return f"shared {compiled.metadata.shared} B; " + "; ".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    p.add_argument("--config", action="append", help="BLOCK_M,BLOCK_N,num_warps,num_stages (default: CONFIGS)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--kp", type=int, default=64, help="padded buckets (product at ratio 1.9: 50 → 64)")
    p.add_argument("--components", type=int, default=1, help="2 for cross")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--arch", type=int, default=90)
    args = p.parse_args(argv)
    configs = [tuple(int(x) for x in c.split(",")) for c in args.config] if args.config else ti.CONFIGS
    for variant in args.variant or sorted(VARIANTS):
        k_mode, q_mode, has_v = VARIANTS[variant]
        constexprs = dict(D=args.head_dim, KP=args.kp, C=args.components, K_MODE=k_mode, Q_MODE=q_mode,
                          HAS_V=has_v)
        for config in configs:
            for name in OUTPUTS:
                report = compile_report(getattr(ti, name), args.dtype, args.arch, config, constexprs)
                print(f"{variant:7s} {','.join(map(str, config)):10s} {name:10s} {report}", flush=True)


if __name__ == "__main__":
    main()
