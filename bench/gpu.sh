#!/usr/bin/env bash
# On a machine with a CUDA GPU and its python3 (torch, cupy, numba, pyarrow, pytest, hypothesis):
# the GPU tests, then the CUDA benchmark. Logs and results go to $OUT (default bench/results).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu-device.txt"
python3 -c "import torch, cupy, numba; print('torch', torch.__version__, 'cupy', cupy.__version__, 'numba', numba.__version__)" | tee -a "$OUT/gpu-device.txt"
timeout ${TEST_TIMEOUT:-330} python3 -m pytest -q --maxfail=15 -p no:cacheprovider tests/gpu "$@" 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
python3 -m bench cuda 2>&1 | tee "$OUT/gpu-bench.log"
cp bench/results/cuda.json "$OUT/" 2>/dev/null || true
if [ -n "${TRANSFORMS:-}" ]; then  # the CPU transforms benchmark on this machine's cores
    python3 -m bench transforms --no-nvtabular --out transforms-gpu-host 2>&1 | tail -30
    cp bench/results/transforms-gpu-host.json "$OUT/" 2>/dev/null || true
fi
exit $tests
