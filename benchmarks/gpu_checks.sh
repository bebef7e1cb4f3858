#!/usr/bin/env bash
# Everything that needs a CUDA device, in one go (a lent GPU machine is held for minutes, so one call does it all):
# the GPU-marked tests, `run.py bench` (bf16 autocast), the attention-kernel candidates (FlexAttention, SDPA with a
# float mask, eager, compiled) in bf16, and a real GPU training run + sweep on the embedded digits data.
#
#   bash benchmarks/gpu_checks.sh OUT_DIR [STEP ...]     # steps, in this order: env tests [fused] bench256 kernels bench train sweep
#   bash benchmarks/gpu_checks.sh OUT_DIR env fused      # only the fused iRPE kernel: its GPU tests, then its timings
#
# Needs the project's dependencies importable (`pip install -e ".[test]"`, or its packages on PYTHONPATH) and a
# CUDA device; nothing is downloaded. Each step's log goes to OUT_DIR/<step>.log and its JSON next to it; a failing step is reported and the
# next one runs (the script exits non-zero if any failed).
set -u
OUT=${1:?usage: gpu_checks.sh OUT_DIR [STEP ...]}
shift
STEPS=${*:-env tests bench256 kernels bench train sweep}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
failed=()

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "=== $name: rc=$rc, $((SECONDS - t0)) s"
  [[ $rc == 0 ]] || failed+=("$name")
}

step env 60 bash -c 'nvidia-smi -L; python -c "import torch, timm, lightning, optuna, wandb;
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0));
print(\"timm\", timm.__version__, \"lightning\", lightning.__version__, \"optuna\", optuna.__version__, \"wandb\", wandb.__version__)"'
step tests 240 python -m pytest -p no:cacheprovider -q -m gpu tests/
# NOTE: `fused` is not in the default list (tests, kernels and bench256 already include the fused kernel's rows); it
# is the short version for a session that only has minutes: the fused kernel's GPU tests, the attention-core
# candidates in training and inference at batch 256, then the model-level variants beside SDPA's and the bias-tile
# kernel's. The first call of each variant compiles and autotunes (CONFIGS × 3 kernels): expect minutes.
step fused 560 bash -c 'python -m pytest -p no:cacheprovider -q -m gpu tests/test_triton_irpe.py &&
  for t in --train ""; do python benchmarks/bench_attention_kernels.py --dtype bfloat16 --batch 256 --no-compile $t ||
  exit; done && python run.py bench --suite train --suite infer --preset tiny224 --batch 256 --no-reference \
  --out "$1" --modes k,qk,qkv,bias_k,k_triton,bias_k_triton,k_fused,qk_fused,qkv_fused,bias_k_fused' _ "$OUT/fused"
# NOTE: batch 32 leaves an H100 mostly idle (launch-bound); 256 is a realistic GPU training batch for DeiT-Tiny.
step bench256 240 python run.py bench --suite train --suite infer --preset tiny224 --batch 256 --no-reference \
  --out "$OUT/bench256"
# COMPILE=1 adds the compiled candidates (FlexAttention, compiled eager: ~2 more minutes of compilation).
# The first (training, L=197) run also profiles eager and attention_core: where the core's time goes on the GPU.
step kernels 300 bash -c 'for t in "--train --profile eager,core" "--train --grid 8" ""; do
  python benchmarks/bench_attention_kernels.py --dtype bfloat16 --batch 256 $t \
    $([[ ${COMPILE:-0} == 1 ]] || echo --no-compile) || exit; done'
step bench 300 python run.py bench --out "$OUT/bench"
# NOTE: the run folders (checkpoints, W&B files) stay on the machine: only the log comes back in OUT.
step train 240 python run.py train configs/digits.yaml --set trainer.accelerator=gpu trainer.precision=bf16-mixed \
  data.num_workers=4 trainer.max_epochs=10 log.runs_dir="${TMPDIR:-/tmp}/irpe_gpu_runs"
step sweep 420 python run.py sweep sweeps/digits_quick.yaml --set out_dir="$OUT/sweep" \
  overrides.trainer.accelerator=gpu overrides.trainer.precision=bf16-mixed overrides.data.num_workers=2

if (( ${#failed[@]} )); then echo "FAILED: ${failed[*]}"; exit 1; fi
echo "all steps passed"
