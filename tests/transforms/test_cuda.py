"""What the CPU can check of the CUDA executor: the kernels compile cleanly for sm_80 and sm_90,
their opcodes are the plan's, and their hash functions are bit-identical to the numba ones."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from gpupre.transforms import plan
from gpupre.transforms._log1p import log1p32_array
from gpupre.transforms.cuda import KERNELS
from gpupre.transforms.reference import float_to_id, hash_128_to_64, sigrid_hash, twang_mix64

NVCC = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
needs_nvcc = pytest.mark.skipif(not shutil.which(NVCC), reason="needs the CUDA compiler nvcc")
SOURCES = sorted(p.name for p in KERNELS.glob("*.cu"))


def test_there_are_kernel_sources():
    assert SOURCES == ["dense.cu", "sparse.cu"]


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES)
def test_every_kernel_compiles_without_warnings(source, arch, tmp_path):
    out = subprocess.run(
        [NVCC, "-std=c++17", f"-arch={arch}", "-cubin", "--Werror", "all-warnings", "-Xptxas", "-v",
         f"-I{KERNELS}", "-o", str(tmp_path / "k.cubin"), str(KERNELS / source)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "spill" not in out.stderr.replace("0 bytes spill", ""), out.stderr  # no register spills


def test_kernel_opcodes_are_the_plans():
    defined = dict(re.findall(r"#define (\w+) (\d+)", (KERNELS / "plan.cuh").read_text()))
    expected = {n: getattr(plan, n) for n in dir(plan) if re.fullmatch(r"[DSM]_[A-Z0-9_]+|MAX_MAPS", n)}
    assert {k: int(v) for k, v in defined.items()} == expected


HOST_PROGRAM = r"""
#include <cstdio>
#include "hash.cuh"
#include "ieee.cuh"
int main() {
    long long x, salt, buckets;
    float f, g;
    while (scanf("%lld %lld %lld %f %f", &x, &salt, &buckets, &f, &g) == 5)
        printf("%llu %llu %lld %lld %lld %d %d\n", twang_mix64((u64)x), hash_128_to_64((u64)x, (u64)salt),
               sigrid_hash(x, salt, buckets), floor_mod(x, buckets), float_to_id(f), float_bits(log1p32(f < 0 ? -f : f)),
               float_bits(div_rn_z(f, g)));
}
"""


@needs_nvcc
def test_cuda_hash_log1p_and_division_are_bit_identical_to_the_cpu_ones(tmp_path):
    (tmp_path / "h.cu").write_text(HOST_PROGRAM)
    exe = tmp_path / "h"
    build = subprocess.run([NVCC, f"-I{KERNELS}", "-o", str(exe), str(tmp_path / "h.cu")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    rng = np.random.default_rng(0)
    ids = [0, 1, 2, 3, -1, 2**63 - 1, -(2**63)] + rng.integers(-(2**63), 2**63 - 1, 200).tolist()
    salts = [0, 1, -5, 2**62] + rng.integers(-(2**63), 2**63 - 1, 203).tolist()
    buckets = [100, 1, 7, 2**63 - 1] + rng.integers(1, 2**40, 203).tolist()
    floats = [0.0, -0.0, 0.0, -0.0, 1.0, 3.0, 0.5, 1023.0, 1.9, -3.7, 3e38, -3e38, 9.3e18, -9.3e18, 9.2e18]  # 1 + x exact, or not
    floats += rng.normal(0, 1e6, 92).astype(np.float32).tolist()
    floats += (rng.random(100) * 10.0 ** rng.integers(-44, 38, 100)).astype(np.float32).tolist()  # every scale
    divisors = [-1.0, 1.0, 2.0, -2.0, float("inf"), float("-inf")] + rng.normal(0, 1e3, 201).astype(np.float32).tolist()
    lines = [f"{x} {s} {b} {float(np.float32(f))!r} {float(np.float32(d))!r}" for x, s, b, f, d in zip(ids, salts, buckets, floats, divisors)]
    run = subprocess.run([str(exe)], input="\n".join(lines), capture_output=True, text=True, check=True)
    got = [list(map(int, line.split())) for line in run.stdout.splitlines()]
    assert len(got) == len(lines)
    for (x, s, b, f, d), row in zip(zip(ids, salts, buckets, floats, divisors), got):
        mask = 2**64 - 1
        log1p_bits = int(log1p32_array(np.float32([-f if f < 0 else f])).view(np.int32)[0])
        quotient_bits = int((np.float32([f]) / np.float32(d)).view(np.int32)[0])  # zero dividends: signed zeros
        assert row == [
            twang_mix64(x), hash_128_to_64(x & mask, s & mask), sigrid_hash(x, s, b), x % b,
            float_to_id(float(np.float32(f))), log1p_bits, quotient_bits,
        ]  # fmt: skip


def test_the_compiled_code_changes_when_a_header_does(tmp_path, monkeypatch):
    # CuPy caches binaries by their code: an edited header must change it, or old kernels load
    from gpupre.transforms import cuda

    for p in KERNELS.iterdir():
        shutil.copy(p, tmp_path / p.name)
    monkeypatch.setattr(cuda, "KERNELS", tmp_path)
    before = cuda.kernel_code("sparse.cu")
    (tmp_path / "hash.cuh").write_text((tmp_path / "hash.cuh").read_text() + "\n// edited\n")
    after = cuda.kernel_code("sparse.cu")
    assert before != after and after.endswith((tmp_path / "sparse.cu").read_text())


def _executor_without_a_gpu():
    import torch

    from gpupre.transforms.cuda import CudaExecutor

    executor = CudaExecutor.__new__(CudaExecutor)
    executor.__setstate__({"device": torch.device("cuda", 0)})
    return executor


def test_a_copy_of_the_executor_holds_no_gpu_memory():
    import pickle

    executor = _executor_without_a_gpu()
    executor._tables, executor._status, executor._pinned = {1: "device tables"}, "status", "pinned"
    copy = pickle.loads(pickle.dumps(executor))
    assert copy.device == executor.device and (copy._tables, copy._status, copy._pinned) == ({}, None, None)


def test_stages_beyond_what_one_launch_or_scan_takes_are_clear_errors():
    import types

    import gpupre as gp

    executor = _executor_without_a_gpu()
    with pytest.raises(gp.KernelError, match="70,000 programs or apps in one stage.*split the pipeline"):
        executor._launch("dense_pass", (1, 70_000))
    with pytest.raises(gp.DataError, match="more than one scan takes.*smaller batches"):
        executor._scan(types.SimpleNamespace(numel=lambda: 2**31))
