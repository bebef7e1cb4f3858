"""The benchmark command runs end to end on a tiny model and reports what it promises (never how fast)."""
import json

import pytest
import torch

from irpe_bench import allocator
from irpe_bench.bench import goals
from irpe_bench.bench.harness import Case, format_table, peak_memory, summarize
from irpe_bench.cli import main


def test_bench_quick_writes_tables_and_json(tmp_path, capsys):
    assert main(["bench", "--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "[layer] micro" in printed and "[train] micro" in printed and "goals" in printed
    payload = json.loads((tmp_path / "quick.json").read_text())
    assert payload["environment"]["threads"] == 1
    assert payload["environment"]["malloc"] == allocator.in_effect()  # the command line applied the policy
    suites = {r["suite"]: r for r in payload["results"]}
    assert set(suites) == {"layer", "train", "infer"}
    train = {row["case"]: row for row in suites["train"]["rows"]}
    families = {f"{f}/ours" for f in ("rope_axial", "rope_mixed", "rpb", "cpb", "cpe")}
    assert set(train) == {"baseline", "k_lowmem/ours", "qkv_lowmem/ours", *families,
                          *(f"{m}/{i}" for m in ("k", "qk", "qkv", "bias_k") for i in ("ours", "reference"))}
    for case in families:  # the other families: timed and measured against the same baseline, no reference
        assert train[case]["x_base"] > 0 and train[case]["peak_mib"] > 0 and "x_ref" not in train[case]
    assert families <= {row["case"] for row in suites["infer"]["rows"]}
    assert train["baseline"]["x_base"] == 1.0 and train["baseline"]["mem_x_base"] == 1.0
    for m in ("k", "qk", "qkv", "bias_k", "k_lowmem", "qkv_lowmem"):
        ours = train[f"{m}/ours"]
        assert ours["rounds"] == 3 and ours["median_ms"] > 0 and ours["peak_mib"] > 0
        assert ours["max_abs_diff"] <= 1e-5  # same weights, same batch: the reference's logits and grads
    # a v table holds more live memory than the baseline in the same step; recomputing the weights holds less
    assert train["qkv/reference"]["mem_x_base"] > 1.0
    assert train["qkv_lowmem/ours"]["peak_mib"] < train["qkv/ours"]["peak_mib"]
    assert train["k_lowmem/ours"]["peak_mib"] < train["k/ours"]["peak_mib"]
    assert "x_ref" in train["qkv_lowmem/ours"]  # compared with the qkv reference
    assert any(g["goal"].startswith("train k ×base") for g in payload["goals"])


def test_summarize_pairs_rounds_and_goals():
    cases = [Case("baseline", "none", "baseline", step=lambda: None, times=[1.0, 2.0, 1.0]),
             Case("k/ours", "k", "ours", step=lambda: None, times=[1.1, 2.2, 1.1], check=0.0),
             Case("k/reference", "k", "reference", step=lambda: None, times=[2.2, 4.4, 2.2])]
    rows = summarize(cases)
    by = {r["case"]: r for r in rows}
    assert by["k/ours"]["x_base"] == pytest.approx(1.1) and by["k/ours"]["x_ref"] == pytest.approx(0.5)
    assert "k/ours" in format_table("t", rows) and "| variant |" in format_table("t", rows, markdown=True)
    met = {g["goal"]: g["met"] for g in goals([dict(suite="train", preset="p", rows=rows)])}
    assert met == {"train k ×base ≤ 1.05": False, "train k faster than reference": True,
                   "train k = reference (≤ 1e-05)": True}


def test_peak_memory_counts_live_tensors():
    def step():
        a = torch.empty(1024, 1024)  # 4 MiB live while b is made
        b = torch.empty(512, 1024)  # 2 MiB
        del a, b

    assert peak_memory(step, torch.device("cpu")) >= 6 * 2 ** 20


@pytest.mark.parametrize("train", [False, True])
def test_attention_kernel_candidates_agree_and_report(train, capsys):
    """benchmarks/bench_attention_kernels.py: every uncompiled candidate computes the same attention as eager."""
    from benchmarks.bench_attention_kernels import main as kernels

    argv = ["--grid", "4", "--batch", "2", "--heads", "2", "--head-dim", "8", "--rounds", "3", "--no-compile"]
    rows = {r["case"]: r for r in kernels(argv + (["--train", "--profile", "core"] if train else []))}
    assert set(rows) == {"baseline", "sdpa_mask", "eager", "core", "recompute", "eager_checkpoint"}
    assert rows["baseline"]["x_base"] == 1.0 and rows["eager"]["max_abs_diff"] == 0.0
    assert all(rows[c]["max_abs_diff"] < 1e-5 for c in ("sdpa_mask", "core", "recompute", "eager_checkpoint"))
    out = capsys.readouterr().out
    assert ("train (fwd+bwd)" if train else "inference") in out and "L=17 B=2" in out
    assert ("profile of one training step: core" in out and "_AttentionCoreBackward" in out) == train


def test_lookup_candidates_agree_and_report(capsys):
    """benchmarks/bench_lookup.py: the three lookups give the same values; forward and backward are timed."""
    from benchmarks.bench_lookup import main as lookup

    tables = lookup(["--grid", "3", "--batch", "2", "--heads", "2", "--rounds", "3"])
    assert [train for train, _ in tables] == [False, True]
    for _, rows in tables:
        assert [r["case"] for r in rows] == ["index_select", "gather", "gather_flat"]
        assert all(r["max_abs_diff"] == 0.0 for r in rows) and rows[0]["x_base"] == 1.0
    assert "forward + backward" in capsys.readouterr().out


@pytest.mark.parametrize("scope", ["core", "package"])
def test_core_ab_compares_a_revision_with_the_working_tree(scope, tmp_path, capsys):
    """benchmarks/bench_core_ab.py: the attention core (or the whole package) as committed at a revision, loaded
    beside the working tree's, trains the same model to the same logits and gradients; both are timed against
    the baseline and against each other, and the JSON records the revision."""
    import subprocess
    from pathlib import Path

    from benchmarks.bench_core_ab import main as core_ab
    from irpe_bench.models import attention as attention_module
    from irpe_bench.models.attention_core import attention_core

    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the script reads the revision's core from git")
    out = tmp_path / "ab.json"
    argv = ["--rev", "HEAD", "--scope", scope, "--preset", "micro", "--batch", "2", "--modes", "k,qkv",
            "--rounds", "2", "--warmup", "0", "--threads", "1", "--out", str(out)]
    rows = {r["case"]: r for r in core_ab(argv)}
    assert set(rows) == {"baseline", "k/HEAD", "k/now", "qkv/HEAD", "qkv/now"}
    assert rows["k/now"]["max_abs_diff"] <= 1e-5 and rows["qkv/now"]["max_abs_diff"] <= 1e-5
    assert rows["k/now"]["x_rev"] > 0 and rows["k/HEAD"]["rounds"] == 2
    assert json.loads(out.read_text())["rev"] == "HEAD" and json.loads(out.read_text())["scope"] == scope
    assert "k: now / HEAD = " in capsys.readouterr().out
    assert attention_module.attention_core is attention_core  # the swap is undone


def test_cuda_only_variants_build_and_equal_the_reference_on_cpu():
    """The variants ``run.py bench`` adds on CUDA (eager K and bias-K, QKV through attention_core's backward) are
    checked here on the CPU, where they run too: their module options apply, and they equal their reference."""
    from irpe_bench.bench import CUDA_EXTRA
    from irpe_bench.bench.suites import FAMILY_MODES, build_models, fp32_checkable, model_suite

    # the Triton ones need CUDA; the other families are timed on the CPU too (test_bench_quick_writes_tables_and_json)
    extra = [m for m in CUDA_EXTRA["train"] if fp32_checkable(m) and m not in FAMILY_MODES]
    assert set(extra) == {"k_eager", "bias_k_eager", "qkv_core", "qkv_lowmem_core"}
    models = build_models("micro", ["qkv_lowmem_core", "k_eager"], ("ours",))
    attn = models["qkv_lowmem_core/ours"].blocks[0].attn
    assert (attn.core_backward, attn.recompute_weights) == (True, True)
    assert models["k_eager/ours"].blocks[0].attn.kernel == "eager"
    rows = model_suite("micro", 2, extra, device=torch.device("cpu"), impls=("ours", "reference"), amp=None,
                       clock="wall", warmup=1, rounds=2, train=True, memory=False)
    ours = {r["case"]: r for r in rows if r["case"].endswith("/ours")}
    assert set(ours) == {f"{m}/ours" for m in extra}
    assert all(r["max_abs_diff"] <= 1e-5 and "x_ref" in r for r in ours.values())


def test_package_imports_nothing_from_benchmarks():
    """The installed package stands alone: no module of irpe_bench imports the checkout's benchmarks/ scripts."""
    import ast
    from pathlib import Path

    import irpe_bench

    offenders = []
    for path in Path(irpe_bench.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "benchmarks"]
    assert offenders == []


@pytest.mark.slow
def test_trial_cost_times_run_py_train_against_the_bare_loop(tmp_path, capsys):
    """benchmarks/bench_trial_cost.py on a tiny config: both sides run as their own processes and finish, the bare
    loop reaches a real accuracy; a sweep worker's later trials give their overhead from the compute time they
    recorded; the JSON holds the round, the ratios and the machine."""
    from benchmarks.bench_trial_cost import main as trial_cost

    from ._train_helpers import tiny_dict, write_yaml

    cfg = write_yaml(tmp_path / "tiny.yaml", tiny_dict(tmp_path, trainer={"benchmark_batches": 0}))
    out = tmp_path / "cost.json"
    assert trial_cost(["--config", str(cfg), "--epochs", "2", "--rounds", "1", "--sweep-trials", "2", "--wandb",
                       "off", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["bare_s"]) == len(data["harness_s"]) == 1 and min(data["bare_s"] + data["harness_s"]) > 0
    assert data["ratio"] == pytest.approx(data["harness_s"][0] / data["bare_s"][0])
    assert data["environment"]["threads"] == 1 and data["goal"] == 1.30
    assert data["speed_ratio"] == pytest.approx(data["harness_train_img_s"][0] / data["bare_train_img_s"][0])
    (row,) = data["sweep_worker"]["trials"]  # trial 2 of the worker: its cycle holds its compute and more
    assert 0 < row["compute_s"] < row["cycle_s"] and data["sweep_worker"]["overhead"] == pytest.approx(
        1 - row["compute_s"] / row["cycle_s"])
    printed = capsys.readouterr().out
    assert "whole trial" in printed and "per-trial overhead in a sweep worker" in printed
