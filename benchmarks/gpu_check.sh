#!/usr/bin/env bash
# The one prepared check for a GPU machine that holds nothing but this repository (and maybe a folder
# of wheels): install, the GPU tests, the tier benchmark with its copy vs zero-copy (uva) gather
# comparison, and the Engram paper's offload experiment (bench_runtime.py: 512 sequences of
# Uniform(100, 1024) tokens, Engram at block 2 of a ~1B-parameter backbone, a 20 GB table all in HBM
# vs all in pinned DRAM vs DRAM over NVMe, each DRAM read by copy and by uva). Every JSON lands in one
# folder; every step runs under `timeout`, capped by what is left of a total budget (default 465 s),
# so the whole run ends within 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [OUT_DIR]     (OUT_DIR: default $OUT, else gpu_results)
#
# --device cpu (or GPU_CHECK_DEVICE=cpu) is the dry run: the same steps at tiny shapes, so that the
# script cannot rot; tests/test_gpu_check.py runs it. A step that fails is logged and the others still
# run; the exit status is 1 if any failed. OUT_DIR/steps.json lists every step's exit status, seconds
# and limit; OUT_DIR/NAME.log holds its stderr.
#
# Environment:
#   GPU_CHECK_SKIP_INSTALL=1   use $PYTHON (default python3) as it is, no venv (the dry run does)
#   GPU_CHECK_VENV             the venv to create or reuse (default .venv), made with
#                              --system-site-packages so a CUDA torch of the system python is used
#   GPU_CHECK_WHEELS           a folder of wheels (default wheels/): when it exists, pip installs
#                              offline from it (--no-index --find-links), e.g. lmdb and zstandard
#   GPU_CHECK_SCRATCH          where the tables go (default /tmp/engramtier-gpu-check; ~21 GB on cuda),
#                              kept so that a second run reuses them; never under OUT_DIR
#   GPU_CHECK_BUDGET_S         the total time budget in seconds (default 465)
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${GPU_CHECK_DEVICE:-cuda}"
OUT_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#--device=}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) OUT_DIR="$1"; shift ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;; esac
OUT_DIR="${OUT_DIR:-${OUT:-gpu_results}}"
SCRATCH="${GPU_CHECK_SCRATCH:-/tmp/engramtier-gpu-check}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-465}"
mkdir -p "$OUT_DIR" "$SCRATCH"
STEPS_FILE="$OUT_DIR/steps.tsv"
: >"$STEPS_FILE"
export PYTHONUNBUFFERED=1

if [ "$DEVICE" = cuda ]; then  # the paper-like shape
  TIERS_ARGS=(--quick --device cuda --gather-rows 4000000 --dir "$SCRATCH/tier-tables")
  RUNTIME_ARGS=(--device cuda --backbone 1b --engram-layers 2 --hash-heads 8 --row-dim 80 --table-size 7900001
                --sequences 512 --min-len 100 --max-len 1024 --batch 16 --modes prefill
                --hierarchies dram,dram-nvme --dram-gather copy,uva --readers 4 --check-batches 4 --repeats 1
                --matmul-precision high --dir "$SCRATCH/runtime")
  LIMIT_INSTALL=75 LIMIT_TABLE=180 LIMIT_TESTS=120 LIMIT_TIERS=80
else  # the dry run: every step, tiny shapes
  TIERS_ARGS=(--quick --device cpu --rows 20000 --repeats 1 --dir "$SCRATCH/tier-tables")
  RUNTIME_ARGS=(--device cpu --table-size 2003 --sequences 8 --min-len 8 --max-len 16 --batch 4 --requests 4
                --prompt-len 8 --hierarchies dram,dram-nvme --dram-gather copy --check-batches 1 --repeats 1
                --dir "$SCRATCH/runtime")
  LIMIT_INSTALL=60 LIMIT_TABLE=60 LIMIT_TESTS=60 LIMIT_TIERS=60
fi

started=$SECONDS
left() { echo $((BUDGET_S - (SECONDS - started))); }

step() {  # step NAME LIMIT_S STDOUT_FILE COMMAND...: run under timeout (capped by the budget), record how it went
  local name="$1" limit="$2" stdout="$3"; shift 3
  local remaining start rc=0
  remaining=$(left)
  [ "$remaining" -lt "$limit" ] && limit=$remaining
  start=$SECONDS
  if [ "$limit" -lt 1 ]; then
    rc=124
    echo "no time left in the ${BUDGET_S} s budget" >"$OUT_DIR/$name.log"
  else
    echo "gpu_check: $name (limit $limit s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$stdout" 2>"$OUT_DIR/$name.log" || rc=$?
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >>"$STEPS_FILE"
  echo "gpu_check: $name: exit $rc after $((SECONDS - start)) s"
  if [ "$rc" != 0 ]; then tail -n 5 "$OUT_DIR/$name.log" | sed "s/^/gpu_check: $name: /"; fi
}

install_venv() {  # a venv that sees the system's packages (a CUDA torch), then this repository and its test extras
  set -euo pipefail
  local py="$VENV/bin/python"
  # without python3-venv's ensurepip, a venv without pip still runs the system's pip
  [ -x "$py" ] || python3 -m venv --system-site-packages "$VENV" || python3 -m venv --system-site-packages --without-pip "$VENV"
  local pip=("$py" -m pip install -q --retries 1 --timeout 15)
  if [ -d "$WHEELS" ]; then pip+=(--no-index --find-links "$WHEELS"); fi
  "$py" -c "import torch" 2>/dev/null || "${pip[@]}" torch==2.13.0
  "$py" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 68)" 2>/dev/null \
    || "${pip[@]}" "setuptools>=68"
  "${pip[@]}" --no-build-isolation -e ".[test]"
  "$py" -c "import torch; assert torch.cuda.is_available(), f'torch {torch.__version__} sees no CUDA device'"
}

if [ -n "${GPU_CHECK_SKIP_INSTALL:-}" ]; then
  PY="${PYTHON:-python3}"
else
  export VENV="${GPU_CHECK_VENV:-.venv}" WHEELS="${GPU_CHECK_WHEELS:-wheels}"
  export -f install_venv
  PY="$VENV/bin/python"
  step install "$LIMIT_INSTALL" "$OUT_DIR/install.txt" bash -c install_venv
fi

# The runtime's LMDB table (20 GB on cuda) is built while the GPU tests run, and the runtime waits for it.
step table "$LIMIT_TABLE" "$OUT_DIR/runtime-table.json" "$PY" benchmarks/bench_runtime.py "${RUNTIME_ARGS[@]}" --build-only &
table_job=$!
step tests "$LIMIT_TESTS" "$OUT_DIR/tests.txt" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
wait "$table_job"
step tiers "$LIMIT_TIERS" "$OUT_DIR/tiers.json" "$PY" benchmarks/bench_tiers.py "${TIERS_ARGS[@]}"
step runtime "$(left)" "$OUT_DIR/runtime.json" "$PY" benchmarks/bench_runtime.py "${RUNTIME_ARGS[@]}"

failed=0
{
  printf '{"device": "%s", "seconds": %d, "budget_s": %d, "steps": {' "$DEVICE" "$((SECONDS - started))" "$BUDGET_S"
  sep=""
  while IFS=$'\t' read -r name rc seconds limit; do
    printf '%s"%s": {"exit": %d, "seconds": %d, "limit_s": %d}' "$sep" "$name" "$rc" "$seconds" "$limit"
    sep=", "
    [ "$rc" = 0 ] || failed=1
  done <"$STEPS_FILE"
  printf '}, "tests_summary": "%s", "ok": %s}\n' "$(tail -n 1 "$OUT_DIR/tests.txt" 2>/dev/null | tr -d '"\\')" \
    "$([ "$failed" = 0 ] && echo true || echo false)"
} >"$OUT_DIR/steps.json"
rm -f "$STEPS_FILE"
echo "gpu_check: $([ "$failed" = 0 ] && echo "every step passed" || echo "a step failed"); results in $OUT_DIR (steps.json)"
exit "$failed"
