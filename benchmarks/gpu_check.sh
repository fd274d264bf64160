#!/usr/bin/env bash
# The GPU check of ifv, one script for one GPU, in under 8 minutes:
#
#   benchmarks/gpu_check.sh OUTDIR [--smoke]
#
#   1. an environment from the node's own Python and torch (PYTHON, default python3): a venv
#      that sees the node's packages, the project from this checkout (no torch pin), and the
#      pure-Python packages the node lacks from wheels beside the checkout (IFV_WHEELS,
#      default ./wheels; benchmarks/gpu_wheels.sh makes them on a machine with internet);
#   2. the test suite's device tests (tests/test_device.py, tests/test_jacobian.py) on CUDA;
#   3. Table 1 on the GPU (python -m benchmarks.table1 --device cuda);
#   4. the paper-sized GoogLeNet stand-in trained on the GPU, and S4 experiment 1 (GN4c, 512
#      features of inception4c at 224 px) at the paper's step counts with 64 targets;
#   5. the demo setting on the GPU twice and on the CPU (same config and seed), compared
#      sample by sample; then, if time is left, experiment 1 again with tf32=true.
#
# Everything lands in OUTDIR: gpu_check.log, tests.log, table1_bench.{md,csv}, the runs'
# parquet files and summary.md (Table 1 rows, median angles, GPU vs CPU, GPU rerun, TF32). --smoke runs
# the same steps on the CPU with tiny sizes (to check the script itself, in a few minutes).
set -euo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR [--smoke]}
MODE=${2:-full}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WHEELS=${IFV_WHEELS:-$REPO/wheels}
BUDGET=${IFV_GPU_CHECK_SECONDS:-450}   # skip optional steps once this much time has passed
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$SECONDS
log() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$OUT/gpu_check.log"; }
fail() { log "FAILED: $*"; exit 1; }

# ---------------------------------------------------------------- 1. the environment
ENV=$OUT/venv
log "environment: $("$PY" --version 2>&1) at $(command -v "$PY")"
"$PY" -c "import torch, torchvision" 2>/dev/null \
  || fail "$PY has no torch and torchvision; set PYTHON to the node's Python that has them"
"$PY" -m venv "$ENV"
SITE=$("$ENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$PY" -c "import site; print('\n'.join(site.getsitepackages()))" > "$SITE/ifv-node.pth"
echo "$REPO" > "$SITE/ifv-checkout.pth"
"$PY" "$REPO/benchmarks/requirements.py" "$REPO/pyproject.toml" > "$OUT/requirements.txt"
if ! "$ENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" \
    -r "$OUT/requirements.txt" > "$OUT/pip.log" 2>&1; then
  missing=$("$ENV/bin/python" "$REPO/benchmarks/requirements.py" "$REPO/pyproject.toml" \
    --missing | sed "s/.*/'&'/" | tr '\n' ' ')
  fail "packages missing on this node and not in $WHEELS: ${missing:-see $OUT/pip.log}(see $OUT/pip.log); on a machine with internet: benchmarks/gpu_wheels.sh DIR ${missing}and copy DIR to $WHEELS"
fi
PYE="$ENV/bin/python"
"$PYE" -c "import ifv, torch; print('ifv from', ifv.__file__, '| torch', torch.__version__, '| CUDA', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee -a "$OUT/gpu_check.log"
IFV=("$PYE" -m ifv.faces.cli)
export IFV_CACHE=$OUT/cache

if [ "$MODE" = "--smoke" ]; then
  DEV=cpu
  BENCH=(--device cpu --models DNde --cpu-features 4)
  TRAIN=(model.train.n_train=64 model.train.n_test=16 model.train.epochs=1)
  SIZES=(sampling.n_total=4 fv.adam_steps=3 fv.lbfgs_steps=3 reopt.steps=2 features.n=8)
  DEMO=(sampling.n_total=4 fv.adam_steps=5 fv.lbfgs_steps=5 reopt.steps=2
        model.train.n_train=64 model.train.n_test=16 model.train.epochs=1)
  DEMO_RUNS=(cpu:demo_cpu)
else
  "$PYE" -c "import torch; assert torch.cuda.is_available()" \
    || fail "no CUDA device visible to torch $("$PYE" -c 'import torch; print(torch.__version__)')"
  DEV=cuda
  BENCH=(--device cuda)
  TRAIN=()
  SIZES=(sampling.n_total=64)
  DEMO=(sampling.n_total=8)
  DEMO_RUNS=(cuda:demo_cuda cuda:demo_cuda_again cpu:demo_cpu)
fi

# ---------------------------------------------------------------- 2. device tests
log "device tests"
(cd "$REPO" && "$PYE" -m pytest -q -p no:cacheprovider tests/test_device.py \
  tests/test_jacobian.py) > "$OUT/tests.log" 2>&1 || fail "device tests (see $OUT/tests.log)"
tail -1 "$OUT/tests.log" | tee -a "$OUT/gpu_check.log"

# ---------------------------------------------------------------- 3. Table 1
log "Table 1 on $DEV"
(cd "$REPO" && "$PYE" -m benchmarks.table1 "${BENCH[@]}" --out "$OUT") > "$OUT/bench.log" 2>&1 \
  || fail "benchmark (see $OUT/bench.log)"

# ---------------------------------------------------------------- 4. GN4c at the paper's scale
log "train googlenet_patterns_224 on $DEV"
"${IFV[@]}" train model=googlenet_patterns_224 device=$DEV progress=false "${TRAIN[@]}" \
  > "$OUT/train.log" 2>&1 || fail "training (see $OUT/train.log)"
log "exp01 (GN4c) at the paper's step counts on $DEV"
"${IFV[@]}" run experiment=exp01 scale=paper profile=paper device=$DEV "${SIZES[@]}" \
  "${TRAIN[@]}" progress=false hydra.run.dir="$OUT/runs/exp01_$DEV" > "$OUT/exp01.log" 2>&1 \
  || fail "exp01 (see $OUT/exp01.log)"

# ---------------------------------------------------------------- 5. CPU vs GPU, TF32
for run in "${DEMO_RUNS[@]}"; do  # DEVICE:NAME; each with its own stage cache
  d=${run%%:*}
  log "demo setting on $d (${run#*:})"
  "${IFV[@]}" run device=$d "${DEMO[@]}" progress=false figures=false \
    stage_cache="$OUT/stages_${run#*:}" hydra.run.dir="$OUT/runs/${run#*:}" \
    > "$OUT/${run#*:}.log" 2>&1 || fail "demo on $d (see $OUT/${run#*:}.log)"
done
if [ $((SECONDS - START)) -lt "$BUDGET" ]; then
  log "exp01 with tf32=true"
  "${IFV[@]}" run experiment=exp01 scale=paper profile=paper device=$DEV tf32=true \
    "${SIZES[@]}" "${TRAIN[@]}" progress=false hydra.run.dir="$OUT/runs/exp01_${DEV}_tf32" \
    > "$OUT/exp01_tf32.log" 2>&1 || log "exp01 with tf32 failed (see $OUT/exp01_tf32.log)"
else
  log "skipped exp01 with tf32=true: $((SECONDS - START)) s past the budget of $BUDGET s"
fi

(cd "$REPO" && "$PYE" -m benchmarks.gpu_summary "$OUT") > "$OUT/summary.md" \
  || fail "summary"
rm -rf "$ENV" "$OUT/cache"
cat "$OUT/summary.md"
log "done in $((SECONDS - START)) s"
