"""Did a change to the attention core make training faster? The core of a git revision against the working tree's,
side by side in one process.

``--scope core`` (default):

``irpe_bench/models/attention_core.py`` (how eager iRPE attention trains on the CPU) is loaded twice: as committed
at ``--rev`` and as it is now. Each mode's model is built once (same weights, random iRPE tables, as
``run.py bench`` builds them) and trained for one step per round through either core, interleaved with the no-RPE
baseline (timm's DeiT), rounds rotated: ``mode/rev`` and ``mode/now`` differ in nothing but the core. Before
timing, both cores' logits and gradients are compared (``max Δ``). Machines of one type differ from session to
session by more than most changes to the core; two cores timed in one process do not.

    python benchmarks/bench_core_ab.py --rev HEAD~1 [--preset tiny224] [--batch 32] [--modes k,qk,qkv] [--rounds 9]

NOTE: only the core module is swapped; the revision's core must still import from the current ``irpe_bench.rpe``
and take the current call.

``--scope package``: the revision's whole ``irpe_bench`` package (``git archive``), imported under another name
beside the current one, builds its own models; they get the current models' state dicts (so both hold the same
learned weights, and neither saves anything else) and the same steps are timed interleaved: ``mode/rev`` and
``mode/now`` differ in every line of the package that changed (bucket ids, lookups, kernels, the core).

    python benchmarks/bench_core_ab.py --scope package --rev HEAD~1 [--preset digits] [--batch 32]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from irpe_bench import allocator
from irpe_bench.bench.harness import CLOCKS, Case, environment, format_table, run_interleaved, summarize, write_json
from irpe_bench.bench.suites import PRESETS, build_models, largest_difference, logits_and_grads
from irpe_bench.models import attention as attention_module
from irpe_bench.models import attention_core as current_core

ROOT = Path(__file__).resolve().parents[1]

CORE_PATH = "irpe_bench/models/attention_core.py"


def core_at(rev: str) -> Callable:
    """``attention_core`` as committed at ``rev``, loaded as a module of the ``irpe_bench.models`` package."""
    source = subprocess.run(["git", "show", f"{rev}:{CORE_PATH}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    module = types.ModuleType("irpe_bench.models._attention_core_at_rev")
    module.__package__ = "irpe_bench.models"
    exec(compile(source, f"{rev}:{CORE_PATH}", "exec"), module.__dict__)
    return module.attention_core


def package_at(rev: str) -> types.ModuleType:
    """The ``irpe_bench`` package as committed at ``rev``, imported as ``irpe_bench_at_rev`` (its imports are
    relative, so it loads its own modules, not the current ones)."""
    archive = subprocess.run(["git", "archive", rev, "irpe_bench"], cwd=ROOT, check=True, capture_output=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="irpe_bench_at_rev_")) / "irpe_bench"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder.parent, filter="data")
    name = "irpe_bench_at_rev"
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return package


@contextlib.contextmanager
def using(core: Callable):
    """``RPEAttention.attend`` calls ``core`` inside the block (the name it looks up), the current core after it."""
    attention_module.attention_core = core
    try:
        yield
    finally:
        attention_module.attention_core = current_core.attention_core


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", required=True, help="git revision whose attention core is compared (e.g. HEAD~1)")
    p.add_argument("--scope", default="core", choices=["core", "package"],
                   help="swap only attention_core.py (default) or the whole irpe_bench package")
    p.add_argument("--preset", default="tiny224", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--modes", default="k,qk,qkv")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                   help="cpu: process CPU time (with --threads 1 on a machine shared with other jobs)")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    allocator.configure()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = torch.device("cpu")  # NOTE: the core trains eager attention on the CPU only (CUDA: autograd)
    modes = args.modes.split(",")
    models = build_models(args.preset, modes, ["ours"])
    if args.scope == "package":
        rev_suites = importlib.import_module(package_at(args.rev).__name__ + ".bench.suites")
        rev_models = rev_suites.build_models(args.preset, modes, ["ours"])
        for mode in modes:  # NOTE: strict: the same learned tensors, and no buffer saved by either
            rev_models[f"{mode}/ours"].load_state_dict(models[f"{mode}/ours"].state_dict())
        variants = {mode: {args.rev: rev_models[f"{mode}/ours"], "now": models[f"{mode}/ours"]} for mode in modes}
        cores = {args.rev: current_core.attention_core, "now": current_core.attention_core}  # each its own core
    else:
        cores = {args.rev: core_at(args.rev), "now": current_core.attention_core}
        variants = {mode: {label: models[f"{mode}/ours"] for label in cores} for mode in modes}
    kw = PRESETS[args.preset]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, kw["img_size"], kw["img_size"], generator=gen)
    y = torch.randint(0, kw["num_classes"], (args.batch,), generator=gen)

    def stepper(model, core):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step():
            with using(core):
                F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    cases = [Case(name="baseline", mode="none", impl="baseline",
                  step=stepper(models["baseline"], current_core.attention_core))]
    for mode in modes:
        outputs = []
        for label, core in cores.items():
            model = variants[mode][label]
            with using(core):
                outputs.append(logits_and_grads(model, x[:8], y[:8]))
            cases.append(Case(name=f"{mode}/{label}", mode=mode, impl=label, step=stepper(model, core)))
        cases[-1].check = largest_difference(*outputs)
    run_interleaved(cases, args.warmup, args.rounds, device, clock=args.clock)
    rows = summarize(cases)
    by_name = {c.name: c for c in cases}
    for row in rows:  # NOTE: paired per round, as ×base: the drift of the machine cancels out of the pair
        if row["impl"] == "now":
            rev = by_name[f"{row['mode']}/{args.rev}"]
            ratios = [t / r for t, r in zip(by_name[row["case"]].times, rev.times)]
            row["x_rev"] = statistics.median(ratios)
            row["x_rev_q1"], _, row["x_rev_q3"] = (statistics.quantiles(ratios, n=4) if len(ratios) > 1
                                                   else [row["x_rev"]] * 3)
    env = environment(threads, device)
    what = "attention core" if args.scope == "core" else "irpe_bench"
    print(f"# {what} at {args.rev} vs now — {env['processor']}, {threads} thread(s), torch {env['torch']}, "
          f"malloc {env['malloc']}, {args.clock} clock")
    print(format_table(f"train · {args.preset} · batch {args.batch}", rows))
    for row in rows:
        if "x_rev" in row:
            print(f"{row['mode']}: now / {args.rev} = {row['x_rev']:.3f} (median of {row['rounds']} per-round ratios; "
                  f"quartiles {row['x_rev_q1']:.3f}–{row['x_rev_q3']:.3f})")
    if args.out:
        write_json(args.out, dict(environment=env, rev=args.rev, scope=args.scope, preset=args.preset,
                                  batch=args.batch, clock=args.clock, rows=rows))
    return rows


if __name__ == "__main__":
    main()
