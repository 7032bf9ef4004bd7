#!/usr/bin/env bash
# One prepared check for a GPU machine that holds nothing but this repository: the GPU tests, the tier
# benchmark with a real device tier, the zero-copy vs gather-then-copy row gather, and the runtime on a
# ~1B-parameter backbone, each JSON under one folder, each step bounded so the whole run stays < 8 min.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [OUT_DIR]      (OUT_DIR default: $OUT or gpu_results)
#
# --device cpu is the dry run (tiny shapes, no install): tests/test_gpu_check.py runs it on every CI pass
# so the script cannot rot. Set-up: the machine's python must import torch with CUDA; wheels the machine
# lacks (lmdb, zstandard, ...) come from ./wheels when that folder exists (no network is assumed);
# GPU_CHECK_SKIP_INSTALL=1 skips it. A failing step is logged and the rest still run; the exit status
# is 1 if any step failed. steps.json lists each step's exit status and seconds.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
if [ "${1:-}" = "--device" ]; then DEVICE="$2"; shift 2; fi
OUT_DIR="${1:-${OUT:-gpu_results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ "$DEVICE" = cuda ] && [ -z "${GPU_CHECK_SKIP_INSTALL:-}" ]; then
  if [ -d wheels ]; then
    "$PY" -m pip install -q --no-index --find-links wheels wheels/*.whl 2>&1 | tail -3
  fi
  "$PY" -c "import torch, numba, lmdb, zstandard; assert torch.cuda.is_available(), 'no CUDA'" \
    || { echo "gpu_check: the python here lacks torch with CUDA or a dependency; carry wheels/"; exit 1; }
fi

if [ "$DEVICE" = cuda ]; then
  GATHER_ARGS="--device cuda"
  TIERS_ARGS="--quick --device cuda"
  RUNTIME_ARGS="--device cuda --backbone 1b --quick --table-size 200003 --row-dim 256"
  TESTS_TIMEOUT=180 GATHER_TIMEOUT=60 TIERS_TIMEOUT=120 RUNTIME_TIMEOUT=180
else
  GATHER_ARGS="--device cpu --rows 20000 --ids 1024 --repeats 2"
  TIERS_ARGS="--quick --device cpu --repeats 1"
  RUNTIME_ARGS="--device cpu --quick --max-tokens 512 --repeats 1 --table-size 2003 --dir $OUT_DIR/runtime-tables"
  TESTS_TIMEOUT=120 GATHER_TIMEOUT=60 TIERS_TIMEOUT=120 RUNTIME_TIMEOUT=180
fi

failed=0
steps=()
step() {  # step NAME TIMEOUT_S COMMAND...: stdout to NAME.json (or NAME.log), stderr to NAME.err
  local name="$1" limit="$2"; shift 2
  local out="$OUT_DIR/$name.json"; [ "$name" = tests ] && out="$OUT_DIR/$name.log"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out" 2>"$OUT_DIR/$name.err"
  local rc=$?
  echo "gpu_check: $name exit $rc in $((SECONDS - start)) s"
  [ "$rc" = 0 ] || { failed=1; tail -5 "$OUT_DIR/$name.err"; }
  steps+=("\"$name\": {\"exit\": $rc, \"seconds\": $((SECONDS - start))}")
}

step tests "$TESTS_TIMEOUT" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
step gather "$GATHER_TIMEOUT" "$PY" benchmarks/bench_gather.py $GATHER_ARGS
step tiers "$TIERS_TIMEOUT" "$PY" benchmarks/bench_tiers.py $TIERS_ARGS --dir "$OUT_DIR/tier-tables"
step runtime "$RUNTIME_TIMEOUT" "$PY" benchmarks/bench_runtime.py $RUNTIME_ARGS

rm -rf "$OUT_DIR/tier-tables" "$OUT_DIR/runtime-tables"
(IFS=,; echo "{\"device\": \"$DEVICE\", ${steps[*]}}") >"$OUT_DIR/steps.json"
exit $failed
