"""The O(L²) bucket lookup of the contextual iRPE terms: which PyTorch op, and what it costs, in one process.

``z`` (B·H, L·K) holds ``x·r`` for every bucket; the term is ``z[n, flat[p]]`` for the L² flat positions ``p``.
Candidates on the same z, index and upstream gradient (interleaved rounds, medians, ratio to ``index_select``):

* ``index_select`` — ``z.index_select(1, flat)``; backward ``index_add`` (the path before ``GatherFlat``);
* ``gather``       — ``torch.gather`` with the index broadcast over B·H; autograd's backward saves z itself;
* ``gather_flat``  — ``irpe_bench.rpe.encoding.GatherFlat``: gather forward, scatter-add backward keeping
  only the index (what the models use).

    python benchmarks/bench_lookup.py [--grid 14] [--batch 32] [--heads 3] [--threads 2]
"""
from __future__ import annotations

import argparse

import torch

from irpe_bench import allocator
from irpe_bench.bench.harness import Case, environment, format_table, run_interleaved, summarize
from irpe_bench.rpe import RPEConfig, bucket_ids
from irpe_bench.rpe.encoding import GatherFlat, bucket_index

LOOKUPS = {
    "index_select": lambda z, flat: z.index_select(1, flat),
    "gather": lambda z, flat: torch.gather(z, 1, flat.expand(z.shape[0], -1)),
    "gather_flat": lambda z, flat: GatherFlat.apply(z, flat.expand(z.shape[0], -1)),
}


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=int, default=14, help="patch grid side (14 → 197 tokens, 8 → 65)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    allocator.configure()  # as the command line does (irpe_bench/allocator.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RPEConfig()
    ids = bucket_ids(cfg.method, cfg.index, cfg.alpha, cfg.beta, cfg.gamma, args.grid, args.grid, 1,
                     torch.device("cpu"))
    K, L = int(ids.max()) + 1, ids.shape[-1]
    flat = bucket_index(ids, K)[0]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.batch * args.heads, L * K, generator=g, requires_grad=True)
    grad = torch.randn(args.batch * args.heads, L * L, generator=g)
    rows, expected = [], LOOKUPS["index_select"](z.detach(), flat)
    for train in (False, True):
        cases = []
        for name, fn in LOOKUPS.items():
            def step(fn=fn):
                if train:
                    z.grad = None
                    fn(z, flat).backward(grad)
                else:
                    with torch.no_grad():
                        fn(z, flat)

            case = Case(name=name, mode="none" if name == "index_select" else "lookup",
                        impl="baseline" if name == "index_select" else "ours", step=step)
            with torch.no_grad():
                case.check = float((fn(z, flat) - expected).abs().max())
            cases.append(case)
        run_interleaved(cases, warmup=3, rounds=args.rounds, device=torch.device("cpu"))
        env = environment(torch.get_num_threads(), torch.device("cpu"))
        title = (f"{'forward + backward' if train else 'forward'} · lookup of L²={L * L} per row · B·H="
                 f"{args.batch * args.heads} K={K} · {env['threads']} threads · torch {torch.__version__}")
        table = summarize(cases)
        print(format_table(title, table))
        rows.append((train, table))
    return rows


if __name__ == "__main__":
    main()
