#!/usr/bin/env bash
# Everything that needs a GPU, in one command for a lent GPU machine (bare image: Python 3.12, torch with
# CUDA, transformers, pytest; no registry). Carry the megatron-core wheel made by:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl megatron-core==0.16.1
# then run this with `.whl` carried. Logs and result JSONs go to $OUT (or ./outputs/gpu).
set -o pipefail
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, megatron.core; print('torch', torch.__version__, 'mcore', megatron.core.__version__)" | tee -a "$OUT/gpu.txt"
# GPU-marked tests (TE/vLLM ones skip when those are not installed; -rs lists every skip and why)
python3 -m pytest tests/gpu tests/rollout/test_broadcast.py -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
python3 benchmarks/train_step_gpu.py --out "$OUT/train_step_gpu_1b.json" 2>&1 | tail -3 | tee "$OUT/train_step_gpu.log"
