"""The `describe` command: the README's first command until the sweep exists."""
import json

from irpe_bench.cli import main
from irpe_bench.overrides import parse_overrides


def test_parse_overrides_nests_and_parses_yaml_values():
    assert parse_overrides(["rpe.mode=bias", "rpe.layers=[0, 1]", "img_size=32", "rpe.shared_head=false"]) == {
        "rpe": {"mode": "bias", "layers": [0, 1], "shared_head": False}, "img_size": 32}


def test_describe_prints_the_variant(capsys):
    assert main(["describe", "--set", "img_size=32", "--set", "patch_size=4", "--set", "rpe.on=qk"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variant"] == "deit_tiny_ctx_product_50_shared_qk"
    assert info["grid"] == [8, 8] and info["num_buckets"] == [50] and info["rpe_layers"] == list(range(12))
    # DeiT-Ti, with 8×8 instead of 14×14 position embeddings, 4×4 instead of 16×16 patch kernels, and the tables
    assert info["params"] == 5_717_416 - (196 - 64) * 192 - 192 * 3 * (256 - 16) + 2 * 12 * 64 * 50


def test_describe_prints_another_family(capsys):
    assert main(["describe", "deit_tiny_patch16_224", "--set", "img_size=28", "patch_size=7", "pos.family=rope_mixed",
                 "abs_pos=false"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variant"] == "deit_tiny_rope_mixed_noabs" and info["rpe"] is None and info["abs_pos"] == "none"
    assert info["pos"] == {"family": "rope_mixed", "layers": "all", "rope_theta": 10.0, "cpb_hidden": None}
    # DeiT-Ti at 28/7 without its position embedding, plus RoPE-Mixed's learnable frequencies: per layer, head and
    # axis, half the head width (64 / 2)
    plain = 5_717_416 - 197 * 192 - 192 * 3 * (256 - 49)
    assert info["params"] == plain + 12 * 3 * 2 * 32


def test_describe_bad_input_is_one_clear_line(capsys):
    """Exit code 2 and one line naming the value and the choices (an uncaught exception would fail the test)."""
    assert main(["describe", "--set", "rpe.method=polar"]) == 2
    err = capsys.readouterr().err
    assert "unknown mapping 'polar'; choices:" in err and "Traceback" not in err
