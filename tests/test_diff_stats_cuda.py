"""The CUDA diff-statistics kernels (csrc/cuda), built two ways: nvcc (``cuda`` backend,
``paramgeom._C_cuda``) and NVRTC at run time (``cupy`` backend).

Without a GPU: the kernel source compiles with nvcc and is NVRTC-safe, both backends report
why they cannot run, the one launch plan (launch_plan.h, which the cupy backend reads through
paramgeom._C) names the kernels the source builds, and the kernels themselves
run on the CPU under a small emulator (one OS thread per CUDA thread), launched with the
cupy backend's own plan and packed arguments, against the float64 oracle. With a GPU
(``requires_cuda``): both backends against the oracle over dtypes, odd shapes, strides,
per-row outputs, bf16 casts, NaN/Inf and more than 2^31 elements, and bitwise determinism.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from emulation import build_emulator, kernel_include_dirs
from oracle import assert_matches
from test_diff_stats import ABSS, DTYPES, RELS, make_pair, oracle_for

import paramgeom
from paramgeom import _contract, _dtypes, _native
from paramgeom._backends import cuda as cuda_backend
from paramgeom._backends import cupy as cupy_backend
from paramgeom._backends.job import DiffStatsJob, DiffStatsRaw
from paramgeom.api import diff_stats as api
from paramgeom.checkpoints.fp8 import dequantize_blocks, quantize_blocks

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "csrc" / "cuda" / "diff_stats_kernels.cuh"
INCLUDE = ROOT / "csrc" / "include"
NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None
)
BACKENDS = ["cuda", "cupy"]
# (rel_tols, abs_tols): the one-tolerance kernels and the up-to-8 ("_tols8") kernels.
TOLS = [((1e-3,), ()), ((), (1e-5,)), ((1e-3,), (1e-5,)), (RELS, ABSS)]


def _job(w0, w1, rel, abs_, cast=None, per_row=False):
    """What paramgeom.diff_stats hands a backend (same views, same flags)."""
    v0, v1 = api._rows_views(w0, w1, per_row)
    return DiffStatsJob(
        w0=_dtypes.bits_view(v0),
        w1=_dtypes.bits_view(v1),
        dtype_code=_dtypes.dtype_code(w0.dtype),
        rel_tols=tuple(rel),
        abs_tols=tuple(abs_),
        cast_bf16=cast == "bf16" and w0.dtype != torch.bfloat16,
        per_row=per_row,
    )


def _same_bits(a: DiffStatsRaw, b: DiffStatsRaw) -> bool:
    def bits(t):
        return None if t is None else t.cpu().view(torch.int64)

    return all(
        (x is None and y is None) or torch.equal(x, y)
        for x, y in (
            (bits(a.counts), bits(b.counts)),
            (bits(a.sums), bits(b.sums)),
            (bits(a.row_changed), bits(b.row_changed)),
            (bits(a.row_sq_delta), bits(b.row_sq_delta)),
        )
    )


# --- the kernel source --------------------------------------------------------------------


def _includes_outside_rtc_guards(path: Path) -> list[str]:
    """``#include <...>`` lines NVRTC would see: those not inside a branch that only
    non-NVRTC compilers take (``#if !defined(__CUDACC_RTC__)``, or the ``#else`` of
    ``#if defined(__CUDACC_RTC__)``)."""
    stack: list[str] = []  # per #if level: "host" (NVRTC skips it), "rtc" or "other"
    bad = []
    for line in path.read_text().splitlines():
        s = line.strip().replace(" ", "")
        if s.startswith(("#if", "#ifdef", "#ifndef")):
            if re.fullmatch(r"#if!defined\(?__CUDACC_RTC__\)?|#ifndef__CUDACC_RTC__", s):
                stack.append("host")
            elif re.fullmatch(r"#ifdefined\(?__CUDACC_RTC__\)?|#ifdef__CUDACC_RTC__", s):
                stack.append("rtc")
            else:
                stack.append("other")
        elif s.startswith(("#else", "#elif")) and stack:
            stack[-1] = {"host": "rtc", "rtc": "host"}.get(stack[-1], "other")
        elif s.startswith("#endif") and stack:
            stack.pop()
        elif s.startswith("#include<") and "host" not in stack:
            bad.append(line)
    return bad


def test_kernel_source_is_nvrtc_safe():
    """NVRTC has no host headers: the .cuh and the headers it pulls in may include system
    headers only behind a __CUDACC_RTC__ guard."""
    headers = ("diff_stats.h", "common.h", "launch_plan.h", "linalg_tiles.h")
    for path in (KERNELS, *(INCLUDE / "paramgeom" / h for h in headers)):
        assert _includes_outside_rtc_guards(path) == [], path
    includes = re.findall(r'#include\s+"([^"]+)"', KERNELS.read_text())
    assert includes == ["paramgeom/diff_stats.h", "paramgeom/launch_plan.h"]


def test_include_scan_catches_unguarded_headers(tmp_path):
    src = tmp_path / "x.cuh"
    src.write_text(
        "#if defined(__CUDACC_RTC__)\n#include <bad_rtc>\n#else\n#include <cstdint>\n#endif\n"
        "#include <cstring>\n#ifndef __CUDACC_RTC__\n#include <vector>\n#endif\n"
    )
    assert _includes_outside_rtc_guards(src) == ["#include <bad_rtc>", "#include <cstring>"]


def _nvcc(tmp_path, *flags):
    unit = tmp_path / "only_kernels.cu"
    unit.write_text('#include "diff_stats_kernels.cuh"\n')
    includes = [f"-I{d}" for d in kernel_include_dirs(tmp_path)]
    cmd = [NVCC, "-std=c++17", "--fmad=false", *includes, *flags]
    out = subprocess.run([*cmd, str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_kernel_source_compiles_alone_with_nvcc(tmp_path):
    """The .cuh on its own (what NVRTC gets), every kernel, for sm_80."""
    _nvcc(tmp_path, "-arch=sm_80", "-c", "-o", str(tmp_path / "k.o"))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_kernel_selection_macro(tmp_path):
    """-DPG_DIFF_STATS_ONLY=<id> (the cupy backend's one-kernel modules) keeps exactly that
    main kernel plus the final and fix-up kernels; ids and names follow the launch plan."""
    cubin = tmp_path / "k.cubin"
    plan = _plan_module().diff_stats_plan(
        4, 4, False, dtype=_dtypes.BFLOAT16, cast_bf16=False, n_rel=1, n_abs=0, sm_count=1
    )
    kid = plan["kernel_id"]
    _nvcc(tmp_path, "-arch=sm_90", "-cubin", f"-DPG_DIFF_STATS_ONLY={kid}", "-o", str(cubin))
    names = set(re.findall(rb"paramgeom_diff_stats_\w+", cubin.read_bytes()))
    assert {n.decode() for n in names} == {plan["kernel"], plan["final"], plan["fixup"]}


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_every_kernel_id_builds_the_kernel_the_plan_names(tmp_path):
    """The plan's name table (launch_plan.h) and the kernel source's instantiations agree:
    the module of each id holds exactly the main kernel of that name."""
    for kid, name in _plan_module().diff_stats_kernels():
        cubin = tmp_path / f"k{kid}.cubin"
        _nvcc(tmp_path, "-arch=sm_90", "-cubin", f"-DPG_DIFF_STATS_ONLY={kid}", "-o", str(cubin))
        found = {n.decode() for n in re.findall(rb"paramgeom_diff_stats_\w+", cubin.read_bytes())}
        assert found - {"paramgeom_diff_stats_final", "paramgeom_diff_stats_rows_fixup"} == {name}


# --- status and the two launch plans ------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU report")
@pytest.mark.parametrize("backend", [cuda_backend, cupy_backend], ids=["cuda", "cupy"])
def test_status_without_gpu(backend):
    ok, reason = backend.status()
    assert ok is False
    assert isinstance(reason, str) and len(reason) > 5


def _compiled():
    module, why = _native.load("_C_cuda")
    if module is None:
        pytest.skip(f"paramgeom._C_cuda {why}")
    return module


def _plan_module():
    module, why = _native.load("_C")
    assert module is not None, why
    return module


def test_launch_plan_choices():
    """Kernel choice by dtype / cast / tolerance count (cast only where a bf16 round trip
    changes values), grid capped at 4 blocks per SM, workspace = a DiffAccum per group plus
    two 24-byte row slots per group in per-row mode."""
    C = _plan_module()

    def plan(
        rows, cols, per_row=False, dtype=_dtypes.BFLOAT16, cast=False, n_rel=1, n_abs=0, sm=132
    ):
        return C.diff_stats_plan(
            rows, cols, per_row, dtype=dtype, cast_bf16=cast, n_rel=n_rel, n_abs=n_abs, sm_count=sm
        )

    assert plan(1, 1, dtype=_dtypes.FLOAT32, cast=True)["kernel"] == "paramgeom_diff_stats_f32_cast"
    assert plan(1, 1, cast=True)["kernel"] == "paramgeom_diff_stats_bf16"  # identity on bf16
    assert plan(1, 1, n_rel=2)["kernel"] == "paramgeom_diff_stats_bf16_tols8"
    assert plan(1, 1, n_rel=0, n_abs=8)["kernel"] == "paramgeom_diff_stats_bf16_tols8"
    assert plan(1, 1, dtype=_dtypes.FLOAT8_E4M3)["kernel"] == "paramgeom_diff_stats_f8e4m3"
    for bad in ({"n_rel": 9}, {"n_abs": -1}, {"dtype": 5}):
        with pytest.raises(ValueError, match="no kernel"):
            plan(1, 1, **bad)
    group = _contract.GROUP_ELEMS
    big = plan(1 << 20, 4096, per_row=True)
    groups = (1 << 32) // group
    assert big["groups"] == groups and big["blocks"] == 132 * 4
    assert big["fixup_blocks"] == min(-(-groups // 256), 132 * 4)
    accum = 8 * (_contract.NUM_COUNTS + _contract.NUM_SUMS)
    assert big["slots_offset"] == groups * accum
    assert big["workspace_bytes"] == groups * accum + 2 * groups * 24
    assert plan(1 << 20, 4096)["workspace_bytes"] == groups * accum
    small = plan(3, 7, sm=0)
    assert (small["groups"], small["blocks"], small["workspace_bytes"]) == (1, 1, accum)
    assert plan(0, 7)["groups"] == 0 and plan(0, 7)["workspace_bytes"] == 0


def test_params_are_packed_by_the_compiled_struct():
    """DiffStatsParams as the kernels take it by value: 4 ints, then 8 + 8 doubles."""
    import struct

    raw = _plan_module().diff_stats_params([1e-3, 2e-3], [5e-6], cast_bf16=True, changed_index=4)
    n_rel, n_abs, cast, changed = struct.unpack_from("<4i", raw)
    assert (len(raw), n_rel, n_abs, cast, changed) == (144, 2, 1, 1, 4)
    tols = struct.unpack_from("<16d", raw, 16)
    assert tols[:2] == (1e-3, 2e-3) and tols[8] == 5e-6


def test_cupy_without_the_plan_module_is_a_reason(monkeypatch):
    """The cupy backend reads its launch plans from paramgeom._C: without it, a clear
    error (and, where cupy is installed, an unusable status with that reason)."""
    real = _native.load

    def load(name):
        return (None, "not compiled (test)") if name == "_C" else real(name)

    monkeypatch.setattr(_native, "load", load)
    with pytest.raises(RuntimeError, match=r"launch plans come from paramgeom._C, not compiled"):
        cupy_backend.main_kernels()
    cupy_backend.status.cache_clear()
    try:
        ok, reason = cupy_backend.status()
        assert not ok and reason
        if importlib.util.find_spec("cupy") is not None:
            assert "paramgeom._C" in reason
    finally:
        cupy_backend.status.cache_clear()


def test_cuda_module_sizes_workspaces_by_the_same_plan():
    ext, C = _compiled(), _plan_module()
    for rows, cols in [(0, 0), (1, 0), (0, 7), (1, 1), (7, 19), (3, 100_000), (1 << 20, 4096)]:
        for per_row in (False, True):
            want = C.diff_stats_plan(
                rows, cols, per_row, dtype=1, cast_bf16=False, n_rel=1, n_abs=0, sm_count=1
            )["workspace_bytes"]
            assert ext.workspace_bytes(rows, cols, per_row) == want


def test_compiled_module_without_gpu():
    ext = _compiled()
    ok, reason = ext.runtime_status()
    assert isinstance(ok, bool) and (ok or reason)
    if not torch.cuda.is_available():
        assert not ok
    with pytest.raises(ValueError, match="w0: expected a CUDA array"):
        cpu = torch.zeros(2, 3, dtype=torch.int16)
        ext.diff_stats(
            cpu,
            cpu,
            dtype=_dtypes.BFLOAT16,
            rel_tols=[1e-3],
            abs_tols=[],
            cast_bf16=False,
            changed_index=_contract.REL0,
            counts=torch.zeros(_contract.NUM_COUNTS, dtype=torch.int64),
            sums=torch.zeros(_contract.NUM_SUMS, dtype=torch.float64),
            workspace=torch.zeros(0, dtype=torch.uint8),
        )


# --- the kernels on the CPU: a thread-per-CUDA-thread emulator -----------------------------

EMULATOR = r"""
// Runs the CUDA kernels of diff_stats_kernels.cuh on the host: every CUDA thread of a
// block is an OS thread; __syncthreads and warp shuffles are barriers over them.
#include <barrier>
#include <cstdint>
#include <cstring>
#include <deque>
#include <thread>
#include <vector>

struct dim3 { unsigned x = 0, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim{256, 1, 1}, gridDim{1, 1, 1};
struct uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint4 __ldg(const uint4* p) { return *p; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct Block {
  std::barrier<> all{256};
  std::deque<std::barrier<>> warps;
  std::uint64_t lanes[8][32];
  Block() { for (int w = 0; w < 8; ++w) warps.emplace_back(32); }
};
inline Block* g_block = nullptr;
inline void __syncthreads() { g_block->all.arrive_and_wait(); }
template <class T>
T __shfl_down_sync(unsigned, T v, int offset) {
  static_assert(sizeof(T) == 8, "64-bit shuffles only");
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  std::memcpy(&g_block->lanes[w][lane], &v, 8);
  g_block->warps[w].arrive_and_wait();
  T r = v;
  if (lane + offset < 32) std::memcpy(&r, &g_block->lanes[w][lane + offset], 8);
  g_block->warps[w].arrive_and_wait();
  return r;
}

#include "diff_stats_kernels.cuh"

using namespace paramgeom;
typedef void (*MainFn)(const void*, const void*, pg_i64, pg_i64, pg_i64, pg_i64,
                       DiffStatsParams, BlockScales, DiffAccum*, PartialRow*, pg_i64*, double*);

template <class F>
static void run_grid(int grid, F body) {
  gridDim.x = grid;
  for (int b = 0; b < grid; ++b) {
    Block block;
    g_block = &block;
    std::vector<std::thread> threads;
    for (int t = 0; t < 256; ++t)
      threads.emplace_back([&body, t, b] { threadIdx.x = t; blockIdx.x = b; body(); });
    for (auto& th : threads) th.join();
  }
}

// Argument i of a cuLaunchKernel-style parameter array.
template <class T>
static T arg(void** p, int i) { return *static_cast<T*>(p[i]); }

extern "C" void emu_main(void* kernel, int grid, void** p) {
  run_grid(grid, [&] {
    reinterpret_cast<MainFn>(kernel)(
        arg<const void*>(p, 0), arg<const void*>(p, 1), arg<pg_i64>(p, 2), arg<pg_i64>(p, 3),
        arg<pg_i64>(p, 4), arg<pg_i64>(p, 5), arg<DiffStatsParams>(p, 6),
        arg<BlockScales>(p, 7), arg<DiffAccum*>(p, 8), arg<PartialRow*>(p, 9),
        arg<pg_i64*>(p, 10), arg<double*>(p, 11));
  });
}

extern "C" void emu_fixup(int grid, void** p) {
  run_grid(grid, [&] {
    paramgeom_diff_stats_rows_fixup(arg<const PartialRow*>(p, 0), arg<pg_i64>(p, 1),
                                    arg<pg_i64>(p, 2), arg<pg_i64*>(p, 3), arg<double*>(p, 4));
  });
}

extern "C" void emu_final(int grid, void** p) {
  run_grid(grid, [&] {
    paramgeom_diff_stats_final(arg<const DiffAccum*>(p, 0), arg<pg_i64>(p, 1),
                               arg<pg_i64*>(p, 2), arg<double*>(p, 3));
  });
}
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cuda_emulator")
    return build_emulator(tmp, EMULATOR, kernel_include_dirs(tmp))


def _emulate(lib, job: DiffStatsJob, sm_count: int) -> DiffStatsRaw:
    """The cupy backend's buffers and launch plan (kernels, grids, packed arguments), run
    by the emulator instead of cuLaunchKernel. Outputs and workspace start as garbage."""
    plan = cupy_backend.diff_stats_plan(job, sm_count)
    counts, sums, rc, rs, workspace = cupy_backend._buffers(job, plan, torch.device("cpu"))
    counts.fill_(-1)
    sums.fill_(-1.0)
    workspace.fill_(0xA5)
    launches = cupy_backend.diff_stats_launches(job, plan, counts, sums, rc, rs, workspace)
    for name, (blocks, _, _), args in launches:
        params = cupy_backend._param_array(args)
        if name == plan["final"]:
            lib.emu_final(blocks, params)
        elif name == plan["fixup"]:
            lib.emu_fixup(blocks, params)
        else:
            lib.emu_main(ctypes.cast(getattr(lib, name), ctypes.c_void_p), blocks, params)
    return DiffStatsRaw(counts, sums, rc, rs)


def _emulated_cases():
    """Small cases that still reach every path: several groups, rows cut by group
    boundaries, warp- and block-wide rows, unaligned rows, strides, NaN/Inf, zero sizes."""
    bf = torch.bfloat16
    yield "bf16-1x65537", *make_pair((65_537,), bf), (1e-3,), (), None, False
    yield "bf16-tols8", *make_pair((70_001,), bf), RELS, ABSS, None, False
    f32 = make_pair((3, 50_000), torch.float32)
    yield "f32-cast-cut-rows", *f32, (1e-3,), (1e-5,), "bf16", True
    yield "bf16-warp-rows", *make_pair((40, 3_000), bf), (1e-3,), (), None, True
    yield "f16-narrow-rows", *make_pair((700, 123), torch.float16), (), (1e-5,), None, True
    yield "e4m3-wide-rows", *make_pair((9, 10_000), torch.float8_e4m3fn), (1e-3,), (), None, True
    a, b = make_pair((37, 300), torch.float8_e5m2)
    yield "e5m2-strided", a[:, 1:], b[:, :299].contiguous(), RELS, ABSS, None, True
    yield "empty-rows", *make_pair((4, 0), bf), (1e-3,), (), None, True
    yield "empty", *make_pair((0,), bf), (1e-3,), (), None, False


@pytest.mark.parametrize("case", list(_emulated_cases()), ids=lambda c: c[0])
def test_emulated_kernels_match_oracle(emulator, case):
    _, w0, w1, rel, abs_, cast, per_row = case
    job = _job(w0, w1, rel, abs_, cast, per_row)
    raw = _emulate(emulator, job, sm_count=1)
    stats = api._result(raw, job, "emulated", tuple(w0.shape[:-1]))
    assert_matches(
        stats, oracle_for(w0.contiguous(), w1.contiguous(), rel, abs_, cast, per_row=per_row)
    )
    # The grid size never changes the bits (the result is a function of the shape alone).
    assert _same_bits(_emulate(emulator, job, sm_count=3), raw)


def test_emulated_alignment_never_changes_bits(emulator):
    """16-byte loads on an aligned copy, scalar loads on a copy one element off: same bits."""
    for dtype in (torch.float32, torch.bfloat16, torch.float8_e4m3fn):
        w0, w1 = make_pair((20_001,), dtype)
        b0, b1 = torch.empty(20_002, dtype=dtype), torch.empty(20_002, dtype=dtype)
        b0[1:], b1[1:] = w0, w1
        aligned = _emulate(emulator, _job(w0, w1, (1e-3,), ()), 1)
        shifted = _emulate(emulator, _job(b0[1:], b1[1:], (1e-3,), ()), 1)
        assert _same_bits(aligned, shifted), dtype


def _scaled_pair(shape, fmt, seed=0):
    """Block-quantised fp8 weights (some rows unchanged) and their fp32 scale grids."""
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(shape, generator=g)
    w1 = w0 + 0.02 * torch.randn(shape, generator=g)
    w1[: shape[0] // 3] = w0[: shape[0] // 3]
    (q0, s0), (q1, s1) = quantize_blocks(w0, fmt), quantize_blocks(w1, fmt)
    return q0, q1, s0, s1


def _emulated_scaled_cases():
    """Block-scaled fp8 (kernel ids 20..23): warp- and block-wide rows (row pieces whose
    columns cross scale blocks inside a 16-byte vector), rows cut by groups, unaligned rows
    (scalar loads: row stride 301), a column window with its grid window, a row block
    whose scale rows start mid-block (scale_row0 = 100), and NaN / Inf / zero scales."""
    e4, e5 = torch.float8_e4m3fn, torch.float8_e5m2
    yield "e4m3-warp-rows-tols8", *_scaled_pair((300, 1000), e4), 0, RELS, ABSS, True
    yield "e5m2-block-rows", *_scaled_pair((3, 9000), e5, seed=1), 0, (1e-3,), (), True
    yield "e4m3-cut-rows-totals", *_scaled_pair((5, 30_000), e4, seed=2), 0, (1e-3,), (), False
    q0, q1, s0, s1 = _scaled_pair((37, 301), e5, seed=3)
    yield "e5m2-unaligned-rows", q0[:, :300], q1[:, :300], s0[:, :3], s1[:, :3], 0, RELS, (), True
    q0, q1, s0, s1 = _scaled_pair((256, 512), e4, seed=4)
    window = (q0[:, 128:384], q1[:, 128:384], s0[:, 1:3].contiguous(), s1[:, 1:3].contiguous())
    yield "e4m3-column-window", *window, 0, RELS, ABSS, True
    q0, q1, s0, s1 = _scaled_pair((517, 300), e4, seed=5)
    yield "e4m3-row-block", q0[100:400], q1[100:400], s0, s1, 100, (1e-3,), (1e-4,), True
    q0, q1, s0, s1 = _scaled_pair((256, 256), e4, seed=6)
    s0, s1 = s0.clone(), s1.clone()
    s0[0, 0], s1[0, 1], s0[1, 1], s1[1, 0] = float("nan"), float("inf"), 0.0, 3e38
    yield "e4m3-hostile-scales", q0, q1, s0, s1, 0, RELS, ABSS, False


@pytest.mark.parametrize("case", list(_emulated_scaled_cases()), ids=lambda c: c[0])
def test_emulated_scaled_kernels_match_oracle_and_cpu(emulator, case):
    """The CUDA kernels' block-scaled fp8 read, launched with the cupy backend's plan and
    packed BlockScales: counts exactly those of the host path (dequantise, bf16) by the
    float64 oracle, sums to 1e-12, and the same counts as the CPU kernel."""
    _, q0, q1, s0, s1, row0, rel, abs_, per_row = case
    job = api.make_scaled_job(q0, q1, (s0, s1), row0, rel, abs_, per_row)
    assert cupy_backend.diff_stats_plan(job, 1)["kernel"].endswith(
        "_scaled" + ("_tols8" if len(rel) > 1 or len(abs_) > 1 else "")
    )
    raw = _emulate(emulator, job, sm_count=1)
    stats = api._result(raw, job, "emulated", tuple(q0.shape[:-1]))
    a = dequantize_blocks(q0, s0, row_start=row0).to(torch.bfloat16)
    b = dequantize_blocks(q1, s1, row_start=row0).to(torch.bfloat16)
    assert_matches(stats, oracle_for(a, b, rel, abs_, per_row=per_row))
    cpu = paramgeom.diff_stats(
        q0, q1, rel, abs_, per_row=per_row, scale_inv=(s0, s1), scale_row0=row0, backend="cpu"
    )
    assert (stats.n_equal, stats.n_within_rel, stats.n_within_abs) == (
        cpu.n_equal, cpu.n_within_rel, cpu.n_within_abs
    )  # fmt: skip
    assert _same_bits(_emulate(emulator, job, sm_count=3), raw)


# --- on a GPU -------------------------------------------------------------------------------

IMPLS = {"cuda": cuda_backend, "cupy": cupy_backend}
GPU_SHAPES = [(), (0,), (1,), (19,), (123,), (989,), (65_537,), (7, 19), (3, 0), (2, 3, 7)]
GPU_ROW_SHAPES = [
    (1,),
    (4, 19),
    (0, 5),
    (3, 0),
    (2, 70_000),
    (3, 100_000),
    (1000, 123),
    (9, 10_000),
]
NONCONTIGUOUS = [
    "row-slice",
    "unaligned-rows",
    "row-strides-differ",
    "row-step",
    "transpose",
    "3d-slice",
    "broadcast",
]


def _usable(backend: str) -> None:
    ok, reason = IMPLS[backend].status()
    if not ok:
        pytest.skip(f"{backend}: {reason}")


def _gpu_pair(shape, dtype, **kw):
    """A CPU pair for the oracle and the same values on the GPU."""
    w0, w1 = make_pair(shape, dtype, **kw)
    return w0, w1, w0.cuda(), w1.cuda()


def _noncontiguous(name):
    _, _, g0, g1 = _gpu_pair((37, 300), torch.bfloat16)
    _, _, c0, c1 = _gpu_pair((3, 4, 40), torch.float16)
    return {
        "row-slice": (g0[:, 3:22], g1[:, 3:22]),
        "unaligned-rows": (g0[:, 1:], g1[:, 1:]),
        "row-strides-differ": (g0[:, :299], g1[:, :299].contiguous()),
        "row-step": (g0[::2, :19], g1[::2, :19]),
        "transpose": (g0.t(), g1.t()),
        "3d-slice": (c0[:, :, 5:12], c1[:, :, 5:12]),
        "broadcast": (g0[:1].expand(5, 300), g1[:1].expand(5, 300)),
    }[name]


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", BACKENDS)
class TestOnGpu:
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
    @pytest.mark.parametrize("tols", TOLS, ids=["rel", "abs", "rel+abs", "tols8"])
    def test_matches_oracle(self, backend, dtype, shape, tols):
        _usable(backend)
        rel, abs_ = tols
        w0, w1, g0, g1 = _gpu_pair(shape, dtype)
        stats = paramgeom.diff_stats(g0, g1, rel_tols=rel, abs_tols=abs_, backend=backend)
        assert stats.backend == backend
        assert_matches(stats, oracle_for(w0, w1, rel, abs_))

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape", GPU_ROW_SHAPES, ids=str)
    @pytest.mark.parametrize("rel", [(1e-3,), ()], ids=["rel", "equality"])
    def test_per_row(self, backend, dtype, shape, rel):
        _usable(backend)
        w0, w1, g0, g1 = _gpu_pair(shape, dtype)
        stats = paramgeom.diff_stats(g0, g1, rel_tols=rel, per_row=True, backend=backend)
        assert stats.row_changed.device == g0.device
        assert stats.row_changed.shape == w0.shape[:-1]
        assert_matches(stats, oracle_for(w0, w1, rel=rel, abs_=(), per_row=True))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
    @pytest.mark.parametrize("per_row", [False, True])
    def test_cast_bf16(self, backend, dtype, per_row):
        _usable(backend)
        w0, w1, g0, g1 = _gpu_pair((3, 70_001), dtype, change=0.9)
        for rel, abs_ in TOLS:
            stats = paramgeom.diff_stats(
                g0, g1, rel, abs_, cast="bf16", per_row=per_row, backend=backend
            )
            assert_matches(stats, oracle_for(w0, w1, rel, abs_, cast="bf16", per_row=per_row))

    @pytest.mark.parametrize("per_row", [False, True])
    @pytest.mark.parametrize("case", NONCONTIGUOUS)
    def test_non_contiguous(self, backend, per_row, case):
        _usable(backend)
        g0, g1 = _noncontiguous(case)
        stats = paramgeom.diff_stats(g0, g1, RELS, ABSS, per_row=per_row, backend=backend)
        want = oracle_for(g0.cpu().contiguous(), g1.cpu().contiguous(), per_row=per_row)
        assert_matches(stats, want)

    @pytest.mark.parametrize("case", list(_emulated_scaled_cases()), ids=lambda c: c[0])
    def test_scaled_fp8_read(self, backend, case):
        """Block-scaled fp8 as stored (bytes and scale grids on the GPU): the emulated
        cases, against the oracle of the host path and the CPU kernel's counts."""
        _usable(backend)
        _, q0, q1, s0, s1, row0, rel, abs_, per_row = case
        kw = dict(per_row=per_row, scale_row0=row0)
        stats = paramgeom.diff_stats(
            q0.cuda(), q1.cuda(), rel, abs_, scale_inv=(s0.cuda(), s1.cuda()), **kw,
            backend=backend,
        )  # fmt: skip
        assert stats.backend == backend
        a = dequantize_blocks(q0, s0, row_start=row0).to(torch.bfloat16)
        b = dequantize_blocks(q1, s1, row_start=row0).to(torch.bfloat16)
        assert_matches(stats, oracle_for(a, b, rel, abs_, per_row=per_row))
        cpu = paramgeom.diff_stats(q0, q1, rel, abs_, scale_inv=(s0, s1), **kw, backend="cpu")
        assert (stats.n_equal, stats.n_within_rel) == (cpu.n_equal, cpu.n_within_rel)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_bitwise_deterministic(self, backend, dtype):
        """Two calls, a side stream, and a copy one element off (scalar loads instead of
        16-byte ones) all give the same bits."""
        _usable(backend)
        impl = IMPLS[backend]
        _, _, g0, g1 = _gpu_pair((2, 300_001), dtype)
        s0 = torch.empty(g0.numel() + 1, dtype=dtype, device=g0.device)
        s1 = torch.empty_like(s0)
        s0[1:], s1[1:] = g0.reshape(-1), g1.reshape(-1)
        for per_row in (False, True):
            job = _job(g0, g1, RELS, ABSS, per_row=per_row)
            first = impl.diff_stats(job)
            assert _same_bits(impl.diff_stats(job), first)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                on_side = impl.diff_stats(job)
            torch.cuda.current_stream().wait_stream(side)
            assert _same_bits(on_side, first)
            shifted = _job(
                s0[1:].view(g0.shape), s1[1:].view(g1.shape), RELS, ABSS, per_row=per_row
            )
            assert _same_bits(impl.diff_stats(shifted), first)

    @pytest.mark.parametrize("per_row", [False, True])
    def test_more_than_2_31_elements(self, backend, per_row):
        """64-bit indexing: 2 x 2.1 GB of fp8 zeros with three changed entries, two past
        element 2^31 (per row: two rows of over 2^30 elements, each cut into many groups)."""
        _usable(backend)
        if torch.cuda.get_device_properties(0).total_memory < 12 * 2**30:
            pytest.skip("needs 12 GiB of GPU memory")
        n = 2**31 + 2 * _contract.GROUP_ELEMS + 78
        w0 = torch.zeros(n, dtype=torch.uint8, device="cuda")
        w1 = torch.zeros_like(w0)
        one = torch.tensor(1.0).to(torch.float8_e4m3fn).view(torch.uint8).item()
        w1[[5, 2**31 + 10, n - 1]] = one
        shape = (2, n // 2) if per_row else (n,)
        stats = paramgeom.diff_stats(
            w0.view(torch.float8_e4m3fn).view(shape),
            w1.view(torch.float8_e4m3fn).view(shape),
            (1e-3,),
            (0.5,),
            per_row=per_row,
            backend=backend,
        )
        assert stats.numel == n
        assert stats.n_equal == n - 3 and stats.n_within_rel == (n - 3,)
        assert stats.n_within_abs == (n - 3,)
        assert (stats.sum_sq_delta, stats.sum_sq_w1, stats.sum_sq_w0) == (3.0, 3.0, 0.0)
        assert (stats.sum_w0w1, stats.max_abs_delta) == (0.0, 1.0)
        if per_row:
            assert stats.row_changed.tolist() == [1, 2]
            assert stats.row_sq_delta.tolist() == [1.0, 2.0]
        del w0, w1
        torch.cuda.empty_cache()


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_row", [False, True])
def test_gpu_nvcc_and_nvrtc_builds_agree_bitwise(dtype, per_row):
    _usable("cuda")
    _usable("cupy")
    _, _, g0, g1 = _gpu_pair((5, 99_999), dtype)
    for rel, abs_ in TOLS:
        job = _job(g0, g1, rel, abs_, per_row=per_row)
        assert _same_bits(cuda_backend.diff_stats(job), cupy_backend.diff_stats(job))
