"""Which attention kernel should carry the contextual iRPE-K term? One attention core, every candidate, one process.

The iRPE-K logits term ``b_ij = s·q_i·r[I(i, j)]`` is (B, H, L, L) and depends on q, so it cannot be folded into
q or k; a kernel must either take it as an additive mask or compute it inside. Candidates, all on the same
q, k, v, table and ids (interleaved rounds, medians, ratios to the baseline of the same round):

* ``baseline``   — ``F.scaled_dot_product_attention`` without iRPE (what timm's DeiT runs);
* ``sdpa_mask``  — our inference path: ``z = q·r`` per bucket, gathered into the float mask of SDPA;
* ``eager``      — matmul, in-place add of the gathered term, softmax, matmul, through autograd;
* ``core``       — our CPU training path: the same forward with :mod:`irpe_bench.models.attention_core`'s
  hand-written backward;
* ``flex``       — ``torch.nn.attention.flex_attention`` with a ``score_mod`` that gathers ``z`` per (i, j)
  inside the kernel, compiled (the only form that fuses the lookup itself);
* ``eager_compiled`` — ``torch.compile`` of the eager form;
* ``triton``     — our GPU training/inference path: the gathered term as the bias of the Triton
  FlashAttention-2 kernel (:mod:`irpe_bench.models.triton_attention`; CUDA, bf16/fp16);
* ``triton_fused`` — the opt-in fused iRPE kernel (:mod:`irpe_bench.models.triton_irpe`): ``q·r`` per bucket
  and its gather inside the kernel, forward and backward, no L×L tensor (CUDA, bf16/fp16);
* ``sdpa_mask_cudnn`` — ``sdpa_mask`` pinned to cuDNN's attention backend (CUDA; where it takes a bias);
* ``recompute``  — the ``recompute_weights`` path (``core`` keeping no L×L tensor for the backward pass, the
  weights recomputed there from one log-sum-exp per row);
* ``eager_checkpoint`` — what ``recompute_weights`` did before: activation checkpointing of ``eager``.

``--train`` times forward + backward (to q, k, v and the table); without it, inference forwards. A candidate
that the current torch cannot run (e.g. FlexAttention's backward on CPU) is reported with the reason instead.
Max |Δ| is each candidate's output against ``eager`` in the same dtype.

    python benchmarks/bench_attention_kernels.py [--tokens 197] [--batch 32] [--train] [--threads 2] [--profile core]
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from irpe_bench import allocator
from irpe_bench.bench.harness import Case, environment, format_table, resolve_device, run_interleaved, summarize
from irpe_bench.models.attention import attention_scores
from irpe_bench.models.attention_core import attention_core
from irpe_bench.rpe import BucketTerm, RPEConfig, bucket_ids, bucket_index, contextual_logits, offset_ids


def build(grid: int, batch: int, heads: int, head_dim: int, device: torch.device, train: bool,
          dtype: torch.dtype = torch.float32):
    cfg = RPEConfig()  # the paper's default: contextual product, ratio 1.9, shared heads, on k
    ids = bucket_ids(cfg.method, cfg.index, cfg.alpha, cfg.beta, cfg.gamma, grid, grid, 1, device)
    n_buckets = int(ids.max()) + 1
    L = ids.shape[-1]
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, L, head_dim, generator=g).to(device, dtype).requires_grad_(train)
               for _ in range(3))
    table = (0.2 * torch.randn(1, head_dim, n_buckets, generator=g)).to(device, dtype).requires_grad_(train)
    return q, k, v, table, ids


def candidates(q, k, v, table, ids, device, grid: int) -> Dict[str, Callable[[], torch.Tensor]]:
    scale = q.shape[-1] ** -0.5
    flat_ids = ids[0]

    def baseline():
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    def sdpa_mask():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=contextual_logits(q, table, ids, scale),
                                              scale=scale)

    def eager_fn(q, k, v, table):
        attn = attention_scores(q, k, [contextual_logits(q, table, ids, scale)], scale).softmax(-1)
        return attn @ v

    def flex_fn(q, k, v, table):
        from torch.nn.attention.flex_attention import flex_attention

        z = torch.matmul(q, table[0] * scale)  # B, H, L, K

        def score_mod(score, b, h, qi, kj):
            return score + z[b, h, qi, flat_ids[qi, kj]]

        return flex_attention(q, k, v, score_mod=score_mod, scale=scale)

    def triton_fn():
        from irpe_bench.models.triton_attention import attention_with_bias

        if not q.is_cuda:
            raise RuntimeError("the Triton kernel runs on CUDA only")
        return attention_with_bias(q, k, v, contextual_logits(q, table, ids, scale), scale)

    def triton_fused():
        from irpe_bench.models.triton_irpe import irpe_attention

        if not q.is_cuda:
            raise RuntimeError("the Triton kernel runs on CUDA only")
        return irpe_attention(q, k, v, offset_ids(ids, grid, grid, 1), (grid, grid), 1, scale=scale, table_k=table)

    def sdpa_mask_cudnn():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return sdpa_mask()

    def core(recompute_weights: bool):
        term = BucketTerm(q, table, scale, bucket_index(ids, table.shape[-1]))
        return attention_core(q, k, v, [term], scale, recompute_weights=recompute_weights)

    return {"baseline": baseline, "sdpa_mask": sdpa_mask, "triton": triton_fn, "triton_fused": triton_fused,
            "sdpa_mask_cudnn": sdpa_mask_cudnn,
            "eager": lambda: eager_fn(q, k, v, table), "core": lambda: core(False), "recompute": lambda: core(True),
            "eager_checkpoint": lambda: checkpoint(eager_fn, q, k, v, table, use_reentrant=False),
            "flex": (lambda f=torch.compile(flex_fn, dynamic=False): f(q, k, v, table)),
            "eager_compiled": (lambda f=torch.compile(eager_fn, dynamic=False): f(q, k, v, table))}


COMPILED = ("flex", "eager_compiled")


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=int, default=14, help="patch grid side (14 → 197 tokens, 8 → 65)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--train", action="store_true", help="forward + backward instead of inference forwards")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="of q, k, v and the table (bfloat16: what bf16 autocast feeds attention on a GPU; the "
                        "candidates then run under bf16 autocast, as in the models)")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled candidates (flex, eager_compiled)")
    p.add_argument("--profile", default="", help="comma-separated candidates to profile after timing (one step "
                   "each under torch.profiler: the operators that cost the time, e.g. --profile eager,core)")
    args = p.parse_args(argv)
    allocator.configure()  # as the command line does (irpe_bench/allocator.py)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    q, k, v, table, ids = build(args.grid, args.batch, args.heads, args.head_dim, device, args.train,
                                getattr(torch, args.dtype))
    inputs = [q, k, v, table]

    def amp():  # NOTE: bf16 runs under autocast, as the models do: eager's softmax then runs in fp32
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    reference = None
    cases, skipped = [], {}
    for name, fn in candidates(q, k, v, table, ids, device, args.grid).items():
        if args.no_compile and name in COMPILED:
            continue

        def step(fn=fn):
            if args.train:
                for t in inputs:
                    t.grad = None
                with amp():
                    out = fn()
                out.sum().backward()
            else:
                with torch.no_grad(), amp():
                    return fn()

        try:
            t0 = time.perf_counter()
            with torch.no_grad(), amp():
                out = fn().float()
            step()  # compiles (flex, eager_compiled) and checks the backward exists
            first = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - a kernel this torch cannot run is a result, not a crash
            skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            continue
        if name == "eager":
            reference = out
        case = Case(name=name, mode="none" if name == "baseline" else "k",
                    impl="baseline" if name == "baseline" else "ours", step=step)
        case.first_s = first  # type: ignore[attr-defined]
        case.out = out  # type: ignore[attr-defined]
        cases.append(case)
    for c in cases:
        if c.impl != "baseline" and reference is not None:
            c.check = float((c.out - reference).abs().max())  # type: ignore[attr-defined]
    run_interleaved(cases, warmup=2, rounds=args.rounds, device=device)
    L = ids.shape[-1]
    env = environment(torch.get_num_threads(), device)
    title = (f"{'train (fwd+bwd)' if args.train else 'inference'} · attention core · L={L} B={args.batch} "
             f"H={args.heads} d={args.head_dim} · {args.dtype} · {env.get('gpu', env['device'])} · "
             f"{env['threads']} threads · torch {torch.__version__}")
    rows = summarize(cases)
    print(format_table(title, rows))
    print("first call (incl. compile), s: " + ", ".join(f"{c.name} {c.first_s:.1f}" for c in cases))  # type: ignore
    for name, why in skipped.items():
        print(f"{name}: not run — {why}")
    for c in cases:
        if c.name in args.profile.split(","):
            print(f"\nprofile of one {'training' if args.train else 'inference'} step: {c.name}")
            print(profile_table(c.step, device))
    return rows


def profile_table(step: Callable[[], object], device: torch.device, rows: int = 15) -> str:
    """The operators of one step by their own time (the device's on CUDA): where a candidate's time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()  # NOTE: warm, so that one-off allocations and kernel loads stay out of the table
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=48)


if __name__ == "__main__":
    main()
