#!/usr/bin/env bash
# Everything that needs a GPU, in one command for a lent single-GPU machine, within a 6-minute budget:
#
#   benchmarks/gpu_checks.sh                 # on the GPU machine (carry .whl/)
#   PYTHON=.venv/bin/python benchmarks/gpu_checks.sh --device cpu   # CPU smoke of the same steps, tiny sizes
#
# The GPU image (Python 3.12, torch with CUDA, transformers, pytest; no vLLM, no Transformer Engine, no
# megatron-core, maybe no psutil, no network) gets both from the carried wheels, made once with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl megatron-core==0.16.1 psutil
# (.whl/ is git-ignored: pass it to the device tool's `carry`; the repo plus wheels is ~3 MB of the 64 MiB.)
#
# Steps (each with its own time limit, all within BUDGET_S; a step past the budget is recorded as skipped):
#   install      megatron-core and psutil from .whl/ (each only when it is not importable already)
#   env          GPU, driver, library versions
#   gpu_tests    every GPU-marked test (tests/gpu/*, the NCCL case of tests/rollout/test_broadcast.py):
#                single-GPU vs CPU parity of forward, loss and gradients; every trainer tensor on cuda and
#                the MCPO steps equal to CPU; TE/FP8, vLLM and 2-GPU cases skip where those are missing
#   train_step   benchmarks/train_step_gpu.py: the 1B model, ours vs the HF transformers peers, micro-batch
#                1 and 4, with a torch.profiler table per system
#   mcpo_overhead benchmarks/mcpo_overhead.py on the device
#   rl_loop      benchmarks/rl_loop_check.py: GRPO and MCPO-GRPO through `mcpo demo` (a 100-step supervised
#                warm start, so the rollouts earn rewards) with rollout.engine=hf, KL term on, checkpoint
#                (MCPO runs: megatron's distributed optimizer), resume, HF export
# Logs, result JSONs and OUT/summary.md (the one summary file) go to $OUT (default outputs/gpu_checks).
# Copy the result JSONs worth keeping to benchmarks/results/ and update README "GPU status".
set -u -o pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    *) echo "usage: $0 [--device cuda|cpu]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
OUT=${OUT:-outputs/gpu_checks}
# The GPU machine's 6 minutes; the CPU smoke runs the same steps on a (shared, slow) CPU with 6x the limits.
SCALE=1
[ "$DEVICE" = cpu ] && SCALE=6
BUDGET_S=${BUDGET_S:-$((360 * SCALE))}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: >"$OUT/checks.tsv"
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
export PYTHONUNBUFFERED=1
FAILED=0

record() {  # record NAME STATUS SECONDS NOTE
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$OUT/checks.tsv"
  echo "== $1: $2 (${3}s) $4"
  case "$2" in FAIL*) FAILED=1 ;; esac
}

check() {  # check NAME LIMIT_S CMD...: exit 0 pass, 3 skip (reason on the log's last line), else fail
  local name=$1 limit=$(($2 * SCALE)) left t0 rc dt
  shift 2
  left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt 15 ]; then record "$name" "SKIP" 0 "no time left in the ${BUDGET_S}s budget"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  dt=$(($(date +%s) - t0))
  if [ $rc -eq 0 ]; then record "$name" PASS "$dt" ""
  elif [ $rc -eq 3 ]; then record "$name" SKIP "$dt" "$(tail -n 1 "$OUT/$name.log")"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then record "$name" "FAIL (timeout ${limit}s)" "$dt" "$name.log"
  else record "$name" "FAIL (exit $rc)" "$dt" "$name.log"
  fi
}

# -- install: megatron-core and psutil (its checkpoint writer needs it; not among its requirements) from the
#    carried wheels, each only where it is not importable already (the CPU venv has both)
install_deps() {
  local reqs=()
  "$PY" -c "import megatron.core" 2>/dev/null || reqs+=(megatron-core)
  "$PY" -c "import psutil" 2>/dev/null || reqs+=(psutil)
  if [ ${#reqs[@]} -eq 0 ]; then echo "megatron-core and psutil already importable"; return 0; fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --find-links .whl \
    --target /tmp/mcpo_site "${reqs[@]}" || { echo "no wheel in .whl/ for ${reqs[*]} on this Python (see the header of $0)"; return 1; }
}
export PY DEVICE OUT
export -f install_deps
check install 90 bash -c install_deps
export PYTHONPATH=/tmp/mcpo_site:$PWD${PYTHONPATH:+:$PYTHONPATH}

# -- env
{
  [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -W ignore -c "
import platform, torch, transformers, megatron.core as m
print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| transformers', transformers.__version__, '| megatron-core', m.__version__)"
  echo "device $DEVICE | commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') | $(date -u +%Y-%m-%dT%H:%MZ)"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# -- GPU-marked tests (on CPU they all skip: the smoke checks they collect and that nothing else breaks)
mapfile -t GPU_TEST_FILES < <(grep -rl "pytest.mark.gpu" tests --include='test_*.py' | sort)
check gpu_tests 150 "$PY" -m pytest "${GPU_TEST_FILES[@]}" -m gpu -q -rs -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml"

# -- the 1B train step next to HF transformers (tiny on CPU), and the MCPO overhead
if [ "$DEVICE" = cuda ]; then
  check train_step 120 "$PY" benchmarks/train_step_gpu.py --device cuda --preset 1b \
    --profile-dir "$OUT/profiles" --out "$OUT/train_step_gpu_1b_cuda.json"
  check mcpo_overhead 60 "$PY" benchmarks/mcpo_overhead.py --device cuda --repeats 5 --out "$OUT/mcpo_overhead_cuda.json"
else
  check train_step 120 "$PY" benchmarks/train_step_gpu.py --device cpu --preset tiny \
    --profile-dir "$OUT/profiles" --out "$OUT/train_step_gpu_tiny_cpu.json"
  check mcpo_overhead 60 "$PY" benchmarks/mcpo_overhead.py --device cpu --smoke --repeats 1 \
    --out "$OUT/mcpo_overhead_smoke_cpu.json"
fi

# -- the RL loop with the in-process HF engine
rl_loop() {
  "$PY" benchmarks/rl_loop_check.py --device "$DEVICE" --out "$OUT/rl"
  local rc=$?
  if [ $rc -eq 3 ] && [ "$DEVICE" = cuda ]; then return 1; fi  # on the GPU machine a missing engine is a failure
  return $rc
}
export -f rl_loop
check rl_loop 150 bash -c rl_loop

"$PY" benchmarks/gpu_checks_summary.py "$OUT"
echo "total $(($(date +%s) - START)) s; summary: $OUT/summary.md"
exit $FAILED
