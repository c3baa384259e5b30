#!/usr/bin/env bash
# The GPU check (`make gpu-check`): build, smoke-test, sanitize and benchmark symkernels on a GPU machine
# in stages that fit the few minutes such a machine is lent for. Each stage runs under its own time budget
# (`timeout`), logs to the results folder and, once finished, leaves a marker there, so a second call after
# a timeout continues with the first stage not yet done. Uses the machine's own Python and torch (no venv,
# offline: nothing is downloaded).
#
#   tools/gpu_check.sh [--dry-run] [--stages build,smoke,sanitize,bench] [--python PY] [--reset]
#
#   build     pip install -e . (--no-build-isolation --no-deps --no-index), MAX_JOBS = all cores, arches
#             of the visible GPU only (tools/cuda_arches.py); prints build_info(); lists the fatbin's
#             arches with cuobjdump where present
#   smoke     tests/test_gpu_smoke.py: every op x {cuda, triton, default route} x dtype x 2 shapes vs
#             its reference (without a GPU it runs the cpu/interpreter half of the table), and
#             tests/test_cuda_arches.py (build_info()'s arches = what nvcc compiled, incl. this GPU's)
#   sanitize  compute-sanitizer memcheck on one small float32 case per CUDA kernel (incl. the opt-in
#             native jvp kernels and the dp4a int4 GEMM); skipped where compute-sanitizer is absent
#   bench     python -m symkernels.bench --quick --device cuda, peers that are installed side by side
#   report    always: summary.md + stages.csv (versions, driver, each stage's status and wall time)
#   suite     not in the default list (it does not fit beside the others): a second command,
#             `--stages suite`, runs every test of the suite that names cuda or triton, on the GPU
#
# Results: bench/results/<gpu>/gpu-check/ (logs, build_info.json, bench CSV/PNG, summary.md, stages.csv).
# Budgets (seconds, env GPU_CHECK_<STAGE>_S) add up to under 9 minutes on one H200 with 16 cores.
# --dry-run prints the plan (stages, budgets, commands, what is already done) and runs nothing.
# --reset forgets the markers (after a code change, to rebuild and rerun everything).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${GPU_PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
RESET=0
STAGES="build smoke sanitize bench"
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --reset) RESET=1 ;;
    --stages) STAGES=${2//,/ }; shift ;;
    --python) PY=$2; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

declare -A BUDGET=(
  [build]=${GPU_CHECK_BUILD_S:-210}
  [smoke]=${GPU_CHECK_SMOKE_S:-120}
  [sanitize]=${GPU_CHECK_SANITIZE_S:-75}
  [bench]=${GPU_CHECK_BENCH_S:-110}
  [suite]=${GPU_CHECK_SUITE_S:-540}
)
for stage in $STAGES; do
  [ -n "${BUDGET[$stage]+set}" ] || { echo "gpu_check: unknown stage '$stage' (stages: ${!BUDGET[*]})" >&2; exit 2; }
done
JOBS=$(nproc)

# Where results go: the GPU's name as the benchmarks spell it (no GPU: "no-gpu", e.g. a dry run here).
GPU=$("$PY" -c "import torch
from symkernels.bench.harness import device_name
print(device_name(torch.device('cuda')) if torch.cuda.is_available() else 'no-gpu')" 2>/dev/null) || GPU=no-gpu
OUT=bench/results/$GPU/gpu-check
DONE=$OUT/.done
HAS_GPU=$([ "$GPU" != no-gpu ] && echo 1 || echo 0)
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)

# One small float32 case per CUDA kernel (ids: tests/test_gpu_smoke.py). The native jvp kernels run only
# with SYMKERNELS_JVP_NATIVE_CUDA=1 (read per call), through the default route; the int4 GEMM's dp4a
# kernel is forced by SYMKERNELS_INT4_MATMUL_KERNEL (read per call), its mma kernel runs in the first pass.
SMOKE="$PY -m pytest tests/test_gpu_smoke.py -q -rs -p no:cacheprovider"
# API errors are torch's own probing (e.g. of peer access), not our kernels' memory accesses.
SAN="${SANITIZER:-compute-sanitizer} --tool memcheck --report-api-errors no --error-exitcode 1 --print-limit 20"
SANITIZE_DEFAULT="$SAN $SMOKE -k 'cuda and float32 and s0'"
SANITIZE_NATIVE="SYMKERNELS_JVP_NATIVE_CUDA=1 SYMKERNELS_INT4_MATMUL_KERNEL=dp4a $SAN $SMOKE \
-k 'float32 and s0 and ((default and (linear_dual or norm_dual or softmax_dual)) or int4_matmul-cuda)'"

# The build compiles for the visible GPU only (tools/cuda_arches.py's choice without TORCH_CUDA_ARCH_LIST):
# images often preset that variable to a long list, which would not build within the budget.
declare -A COMMAND=(
  [build]="env -u TORCH_CUDA_ARCH_LIST MAX_JOBS=$JOBS PIP_BREAK_SYSTEM_PACKAGES=1 $PY -m pip install --no-build-isolation --no-deps --no-index -e . && \
$PY -c 'import json, symkernels; print(json.dumps(symkernels.build_info(), indent=1))' > $OUT/build_info.json"
  [smoke]="$SMOKE tests/test_cuda_arches.py"
  [sanitize]="$SANITIZE_DEFAULT && $SANITIZE_NATIVE"
  [bench]="$PY -m symkernels.bench --quick --device cuda --out $OUT/bench"
  [suite]="$PY -m pytest -q -rs -p no:cacheprovider -k 'cuda or triton' --ignore=tests/test_gpu_smoke.py"
)

# Why a stage does not apply here (empty: it runs).
not_applicable() {
  case $1 in
    build|bench|suite) [ "$HAS_GPU" = 1 ] || echo "no CUDA device visible to torch" ;;
    sanitize) if [ "$HAS_GPU" != 1 ]; then echo "no CUDA device visible to torch"
              elif [ -z "$SANITIZER" ]; then echo "compute-sanitizer not installed"; fi ;;
    smoke) ;;
  esac
}

versions() {
  "$PY" - <<'EOF' 2>/dev/null || echo "| versions | (python could not import torch) |"
import platform, subprocess, torch
try:
    import triton
    triton_version = triton.__version__
except Exception as exc:
    triton_version = f"absent ({type(exc).__name__})"
try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=20).stdout.strip() or "unknown"
except (OSError, subprocess.SubprocessError):
    driver = "unknown (no nvidia-smi)"
rows = {"GPU": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "driver": driver, "CUDA (torch)": torch.version.cuda, "torch": torch.__version__, "Triton": triton_version,
        "Python": platform.python_version(), "CPU cores": str(__import__("os").cpu_count())}
for name in ("e3nn", "cupy"):
    try:
        rows[name] = __import__(name).__version__
    except Exception:
        rows[name] = "not installed (peer reported missing)"
print("\n".join(f"| {k} | {v} |" for k, v in rows.items()))
EOF
}

plan() {
  echo "gpu_check plan: results in $OUT, python $PY, $JOBS cores, GPU: $GPU"
  for stage in $STAGES; do
    local why; why=$(not_applicable "$stage")
    local state="to run"
    [ -f "$DONE/$stage" ] && state="done ($(cat "$DONE/$stage")), skipped"
    [ -n "$why" ] && state="skipped: $why"
    printf '  %-9s budget %4ss  %s\n            %s\n' "$stage" "${BUDGET[$stage]}" "$state" "${COMMAND[$stage]}"
  done
  echo "  report    always: $OUT/summary.md, $OUT/stages.csv"
}

run_stage() {
  local stage=$1 why start status rc
  why=$(not_applicable "$stage")
  if [ -f "$DONE/$stage" ]; then
    echo "== $stage: already done ($(cat "$DONE/$stage")); --reset to rerun"
    return 0
  fi
  if [ -n "$why" ]; then
    echo "== $stage: skipped ($why)"
    echo "$stage,skipped: $why,0,${BUDGET[$stage]},$(date -u +%FT%TZ)" >> "$OUT/stages.csv"
    return 0
  fi
  echo "== $stage (budget ${BUDGET[$stage]} s): ${COMMAND[$stage]}"
  start=$(date +%s)
  # timeout signals its whole process group: a stage past its budget stops with everything it started.
  timeout --kill-after=15 "${BUDGET[$stage]}" bash -c "${COMMAND[$stage]}" > "$OUT/$stage.log" 2>&1
  rc=$?
  local wall=$(( $(date +%s) - start ))
  case $rc in
    0) status=passed ;;
    124|137) status="timed out" ;;
    *) status="failed (exit $rc)" ;;
  esac
  tail -n 15 "$OUT/$stage.log"
  echo "== $stage: $status in $wall s (log: $OUT/$stage.log)"
  echo "$stage,$status,$wall,${BUDGET[$stage]},$(date -u +%FT%TZ)" >> "$OUT/stages.csv"
  # Finished stages are not repeated by the next call; a timed-out one is. A failed build is not "done"
  # either: nothing after it can run, and the next call (after a fix) must rebuild.
  if [ $rc -eq 0 ] || { [ "$status" != "timed out" ] && [ "$stage" != build ]; }; then
    echo "$status" > "$DONE/$stage"
  fi
  [ $rc -eq 0 ]
}

report() {
  {
    echo "# symkernels GPU check: $GPU"
    echo
    echo "$(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    echo "| | |"
    echo "|---|---|"
    versions
    echo
    echo "| stage | status | wall (s) | budget (s) | finished |"
    echo "|---|---|---|---|---|"
    tail -n +2 "$OUT/stages.csv" | awk -F, '{printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5}'
    [ -f "$OUT/build_info.json" ] && { echo; echo '```json'; cat "$OUT/build_info.json"; echo '```'; }
    [ -f "$OUT/bench.log" ] && { echo; echo "## quick benchmark"; echo; sed -n '/^# symkernels benchmarks/,$p' "$OUT/bench.log"; }
  } > "$OUT/summary.md"
  echo "== report: $OUT/summary.md, $OUT/stages.csv"
}

if [ "$DRY" = 1 ]; then
  plan
  exit 0
fi
mkdir -p "$DONE"
[ "$RESET" = 1 ] && rm -f "$DONE"/*
[ -f "$OUT/stages.csv" ] || echo "stage,status,wall_s,budget_s,finished" > "$OUT/stages.csv"
plan
overall=0
for stage in $STAGES; do
  if ! run_stage "$stage"; then
    overall=1
    [ "$stage" = build ] && { echo "== build failed: later stages need it"; break; }
  fi
  if [ "$stage" = build ] && [ -f "$OUT/build_info.json" ]; then
    cat "$OUT/build_info.json"
    cuobjdump=$(command -v cuobjdump || ls /usr/local/cuda/bin/cuobjdump 2>/dev/null || true)
    if [ -n "$cuobjdump" ]; then
      echo "arches in the binary (cuobjdump --list-elf):"
      "$cuobjdump" --list-elf symkernels/_C*.so 2>&1 | grep -o 'sm_[0-9a-z]*' | sort | uniq -c | tee "$OUT/fatbin_arches.txt"
    fi
  fi
done
report
exit $overall
