"""The CUDA kernels of diff_matmul and gram_update (csrc/cuda/diff_matmul_kernels.cuh,
gram_update_kernels.cuh, paramgeom/linalg_tiles.h), built two ways: nvcc (``cuda`` backend,
``paramgeom._C_cuda``) and NVRTC at run time (``cupy`` backend).

Without a GPU: every kernel compiles with the real NVRTC (compute_80 and compute_90) with
the cupy backend's options and alone with nvcc; the one launch plan (launch_plan.h, read by
the cupy backend through paramgeom._C) tiles the product and sizes its workspace;
and the kernels run on the CPU under a small emulator (one OS thread per CUDA thread),
launched with the cupy backend's own plan and packed arguments, against float64 results.
With a GPU (``requires_cuda``): both backends against float64 over dtypes, odd shapes,
transpose, split-K, row-strided and unaligned inputs, fp32/fp64 G, and bitwise determinism.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from emulation import build_emulator, kernel_include_dirs
from test_diff_stats_cuda import _includes_outside_rtc_guards
from test_nvrtc_compile import _compile, nvrtc  # noqa: F401  (fixture)

from paramgeom import _contract, _native
from paramgeom._backends import cuda as cuda_backend
from paramgeom._backends import cupy as cupy_backend

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
INCLUDE = ROOT / "csrc" / "include"
OPS = ("diff_matmul", "gram_update")
SOURCES = tuple(_contract.CUDA_KERNEL_SOURCES[op] for op in OPS)
NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None
)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
RTOL = 1e-5  # relative (Frobenius) error allowed against float64 (job.py contract)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.isfinite(got).all(), "non-finite values in the result"
    scale = want.norm().item()
    return (got - want).norm().item() / (scale if scale > 0 else 1.0)


def _pair(shape, dtype, scale=1.0):
    """w0 and a small update w1 = w0 + dW in ``dtype`` (most of the difference cancels)."""
    w0 = torch.randn(shape, dtype=torch.float64) * scale
    w1 = w0 + 1e-2 * scale * torch.randn(shape, dtype=torch.float64)
    return w0.to(dtype), w1.to(dtype)


def _dm_want(w0, w1, x, transpose):
    d = w1.double() - w0.double()
    return (d.T if transpose else d) @ x.double()


def _gram_want(G, x, x0, alpha):
    d = x.double() - (0 if x0 is None else x0.double())
    return G.double() + alpha * (d.T @ d)


# --- the kernel sources --------------------------------------------------------------------


def test_kernel_sources_are_nvrtc_safe():
    for path in (*(CUDA_DIR / s for s in SOURCES), INCLUDE / "paramgeom" / "linalg_tiles.h"):
        assert _includes_outside_rtc_guards(path) == [], path
        text = path.read_text()
        assert all(inc.startswith("paramgeom/") for inc in _quoted_includes(text)), path


def _quoted_includes(text: str) -> list[str]:
    return [ln.split('"')[1] for ln in text.splitlines() if ln.strip().startswith('#include "')]


def test_sources_are_installed_or_in_tree():
    for op in OPS:
        code = cupy_backend.kernel_code(op)
        assert code.startswith("// paramgeom headers sha256 ")
        assert "paramgeom/linalg_tiles.h" in code


@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("op,kid,name,final", cupy_backend.linalg_kernels(), ids=lambda v: str(v))
def test_every_kernel_compiles_with_nvrtc(nvrtc, arch, op, kid, name, final):  # noqa: F811
    code = cupy_backend.kernel_code(op)
    options = cupy_backend.full_nvrtc_options(cupy_backend.nvrtc_options(op, kid), arch)
    rc, log, ptx = _compile(nvrtc, code, options)
    assert rc == 0, f"NVRTC failed for {name}:\n{log}"
    assert f".entry {name}(" in ptx and f".entry {final}(" in ptx
    others = [n for s, k, n, _ in cupy_backend.linalg_kernels() if n != name]
    assert not any(f".entry {n}(" in ptx for n in others), "one kernel per module"
    # Explicit fp32 FMAs survive --fmad=false; no tensor-core (mma / tf32) instructions.
    assert "fma.rn.f32" in ptx
    assert "mma." not in ptx and "tf32" not in ptx
    assert ".ftz" not in ptx  # the options the backend builds with (no flush to zero)


def _nvcc(tmp_path, source, *flags):
    unit = tmp_path / f"only_{source}.cu"
    unit.write_text(f'#include "{source}"\n')
    includes = [f"-I{d}" for d in kernel_include_dirs(tmp_path)]
    cmd = [NVCC, "-std=c++17", "--fmad=false", *includes, *flags]
    out = subprocess.run([*cmd, str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", SOURCES)
def test_kernel_source_compiles_alone_with_nvcc(tmp_path, source):
    """The .cuh on its own (what NVRTC gets), every kernel, sm_80 SASS, no register spills
    in the 16-bit kernels (the fp32 ones may spill a few bytes)."""
    out = _nvcc(tmp_path, source, "-arch=sm_80", "-Xptxas", "-v", "-c", "-o", "k.o")
    assert "error" not in out.stderr.lower()


# --- the launch plan (paramgeom/launch_plan.h, read through paramgeom._C) ------------------

PLAN_SHAPES = [
    (0, 0, 0),
    (1, 1, 1),
    (1, 1, 0),
    (7, 3, 5),
    (4096, 64, 14336),
    (14336, 64, 4096),
    (14336, 14336, 4096),
    (64, 64, 1 << 20),
    (1, 1, 1 << 31),
    (300, 70, 2000),
]
TILE_P, TILE_Q, TILE_R = 128, 64, 32  # linalg_tiles.h, as the plan's invariants state them


def _compiled():
    module, why = _native.load("_C_cuda")
    if module is None:
        pytest.skip(f"paramgeom._C_cuda {why}")
    return module


def _plan_module():
    module, why = _native.load("_C")
    assert module is not None, why
    return module


@pytest.mark.parametrize("P,Q,R", PLAN_SHAPES)
def test_plan_covers_the_product_and_sizes_the_workspace(P, Q, R):
    """diff_matmul (m, n, k) = (P, R, Q) and its transpose (R, P, Q) both compute a P x Q
    product over R: the grid tiles the output, the splits cover the reduction, and the
    workspace holds one fp32 partial per split exactly when there is more than one."""
    C = _plan_module()
    for plan in (
        C.diff_matmul_plan(1, P, R, Q, False),
        C.diff_matmul_plan(1, R, P, Q, True),
    ):
        assert (plan["P"], plan["Q"], plan["R"]) == (P, Q, R)
        tiles_p, tiles_q, splits = plan["grid"]
        assert tiles_p == -(-P // TILE_P) and tiles_q == -(-Q // TILE_Q)
        assert splits >= 1 and splits * plan["tiles_per_split"] * TILE_R >= R
        assert (splits - 1) * plan["tiles_per_split"] * TILE_R < max(R, 1)  # no empty split
        assert plan["workspace_bytes"] == (splits * P * Q * 4 if splits > 1 else 0)
        assert 1 <= plan["final_blocks"] <= 1 << 16
    gram = C.gram_update_plan(1, R, P)
    assert (gram["P"], gram["Q"], gram["R"]) == (P, P, R)


def test_plan_names_every_kernel_once_and_refuses_unknown_dtypes():
    C = _plan_module()
    names = [name for _, _, name, _ in C.linalg_kernels()]
    assert len(names) == len(set(names)) == 9
    for dtype, suffix in ((0, "f32"), (1, "bf16"), (2, "f16")):
        assert (
            C.diff_matmul_plan(dtype, 4, 4, 4, True)["kernel"]
            == f"paramgeom_diff_matmul_{suffix}_t"
        )
        assert C.gram_update_plan(dtype, 4, 4)["kernel"] == f"paramgeom_gram_update_{suffix}"
    with pytest.raises(ValueError, match="no kernel for dtype code 3"):
        C.diff_matmul_plan(3, 4, 4, 4, False)
    with pytest.raises(ValueError, match="negative size"):
        C.gram_update_plan(1, -1, 4)


def test_cuda_module_sizes_workspaces_by_the_same_plan():
    ext, C = _compiled(), _plan_module()
    for P, Q, R in PLAN_SHAPES:
        for t in (False, True):
            plan = C.diff_matmul_plan(1, P, R, Q, t)
            assert ext.diff_matmul_workspace_bytes(P, R, Q, t) == plan["workspace_bytes"]
        assert (
            ext.gram_update_workspace_bytes(R, P) == C.gram_update_plan(1, R, P)["workspace_bytes"]
        )


def test_plan_splits_only_what_needs_it():
    C = _plan_module()
    # The skinny paper shape: 32 output tiles, the reduction of 14336 split 8 ways.
    plan = C.diff_matmul_plan(1, 4096, 14336, 64, False)
    assert plan["grid"] == (32, 1, 8) and plan["tiles_per_split"] == 56
    # A big Gram: 25088 tiles, no split, no workspace.
    gram = C.gram_update_plan(1, 4096, 14336)
    assert gram["grid"][2] == 1 and gram["workspace_bytes"] == 0


def test_compiled_module_rejects_bad_arguments_without_gpu():
    ext = _compiled()
    cpu16 = torch.zeros(4, 3, dtype=torch.int16)
    x = torch.zeros(3, 2)
    out = torch.zeros(4, 2)
    ws = torch.zeros(0, dtype=torch.uint8)
    with pytest.raises(ValueError, match="w0: expected a CUDA array"):
        ext.diff_matmul(cpu16, cpu16, x, out, dtype=1, transpose=False, workspace=ws)
    with pytest.raises(ValueError, match="dtype: expected"):
        ext.diff_matmul(cpu16, cpu16, x, out, dtype=3, transpose=False, workspace=ws)
    with pytest.raises(ValueError, match="x: expected a CUDA array"):
        ext.gram_update(torch.zeros(3, 3), cpu16, dtype=1, alpha=1.0, workspace=ws)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU report")
@pytest.mark.parametrize("backend", [cuda_backend, cupy_backend], ids=["cuda", "cupy"])
def test_status_without_gpu_is_unchanged(backend):
    ok, reason = backend.status()
    assert ok is False and isinstance(reason, str) and reason
    assert callable(backend.diff_matmul) and callable(backend.gram_update)


# --- the kernels on the CPU: a thread-per-CUDA-thread emulator -----------------------------

EMULATOR = r"""
// Runs the kernels of diff_matmul_kernels.cuh and gram_update_kernels.cuh on the host:
// every CUDA thread of a block is an OS thread; __syncthreads is a barrier over them.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

struct dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim{256, 1, 1}, gridDim{1, 1, 1};
struct uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint4 __ldg(const uint4* p) { return *p; }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define PG_CUDA_EMULATION 1
inline std::barrier<>* g_barrier = nullptr;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }

#include "diff_matmul_kernels.cuh"
#include "gram_update_kernels.cuh"

typedef void (*GemmFn)(const void*, const void*, pg_i64, pg_i64, const void*, const void*,
                       pg_i64, pg_i64, pg_i64, pg_i64, pg_i64, pg_i64, void*, pg_i64, int,
                       double);
typedef void (*FinalFn)(const float*, pg_i64, pg_i64, pg_i64, void*, pg_i64, int, double);

template <class F>
static void run_grid(unsigned gx, unsigned gy, unsigned gz, F body) {
  gridDim = dim3{gx, gy, gz};
  for (unsigned z = 0; z < gz; ++z)
    for (unsigned y = 0; y < gy; ++y)
      for (unsigned x = 0; x < gx; ++x) {
        std::barrier<> barrier(256);
        g_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < 256; ++t)
          threads.emplace_back([&body, t, x, y, z] {
            threadIdx = dim3{t, 0, 0};
            blockIdx = dim3{x, y, z};
            body();
          });
        for (auto& th : threads) th.join();
      }
}

template <class T>
static T arg(void** p, int i) { return *static_cast<T*>(p[i]); }

extern "C" void emu_gemm(void* kernel, unsigned gx, unsigned gy, unsigned gz, void** p) {
  run_grid(gx, gy, gz, [&] {
    reinterpret_cast<GemmFn>(kernel)(
        arg<const void*>(p, 0), arg<const void*>(p, 1), arg<pg_i64>(p, 2), arg<pg_i64>(p, 3),
        arg<const void*>(p, 4), arg<const void*>(p, 5), arg<pg_i64>(p, 6), arg<pg_i64>(p, 7),
        arg<pg_i64>(p, 8), arg<pg_i64>(p, 9), arg<pg_i64>(p, 10), arg<pg_i64>(p, 11),
        arg<void*>(p, 12), arg<pg_i64>(p, 13), arg<int>(p, 14), arg<double>(p, 15));
  });
}

extern "C" void emu_final(void* kernel, unsigned gx, void** p) {
  run_grid(gx, 1, 1, [&] {
    reinterpret_cast<FinalFn>(kernel)(arg<const float*>(p, 0), arg<pg_i64>(p, 1),
                                      arg<pg_i64>(p, 2), arg<pg_i64>(p, 3), arg<void*>(p, 4),
                                      arg<pg_i64>(p, 5), arg<int>(p, 6), arg<double>(p, 7));
  });
}
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("linalg_emulator")
    return build_emulator(tmp, EMULATOR, kernel_include_dirs(tmp), ["-fno-strict-aliasing"])


def _emulate(lib, plan: dict, launches: list) -> None:
    for name, grid, args in launches:
        params = cupy_backend._param_array(args)
        fn = ctypes.cast(getattr(lib, name), ctypes.c_void_p)
        if name == plan["final"]:
            lib.emu_final(fn, ctypes.c_uint(grid[0]), params)
        else:
            lib.emu_gemm(fn, *(ctypes.c_uint(g) for g in grid), params)


def _emu_diff_matmul(lib, w0, w1, x, transpose):
    """What cupy_backend.diff_matmul launches, run by the emulator (workspace as garbage)."""
    plan = cupy_backend.diff_matmul_plan(w0, x, transpose)
    out = torch.full((plan["P"], x.shape[1]), float("nan"))
    ws = torch.full((plan["workspace_bytes"],), 0xA5, dtype=torch.uint8)
    launches = cupy_backend.diff_matmul_launches(plan, w0, w1, x, out, ws)
    _emulate(lib, plan, launches)
    return out, launches


def _emu_gram(lib, G, x, x0, alpha):
    plan = cupy_backend.gram_update_plan(x)
    ws = torch.full((plan["workspace_bytes"],), 0xA5, dtype=torch.uint8)
    launches = cupy_backend.gram_update_launches(plan, G, x, x0, alpha, ws)
    _emulate(lib, plan, launches)
    return launches


def _emulated_dm_cases():
    # (label, m, n, k, transpose, dtype, layout)
    yield "bf16-split-vector", 150, 704, 70, False, torch.bfloat16, "contiguous"
    yield "bf16-t-split-vector", 700, 152, 70, True, torch.bfloat16, "contiguous"
    yield "f32-odd", 37, 19, 5, False, torch.float32, "contiguous"
    yield "f32-t-strided", 300, 130, 9, True, torch.float32, "strides-differ"
    yield "f16-unaligned", 129, 301, 3, False, torch.float16, "unaligned"
    yield "f16-t-unaligned", 301, 129, 66, True, torch.float16, "unaligned"
    yield "bf16-one", 1, 1, 1, False, torch.bfloat16, "contiguous"


def _layout(w0, w1, layout):
    """Row-strided views of the same values: w0 inside a wider buffer, w1 off by one column
    (no 16-byte loads), or the plain tensors."""
    if layout == "contiguous":
        return w0, w1
    m, n = w0.shape
    b0 = torch.zeros(m, n + 8, dtype=w0.dtype)
    b0[:, 3 : 3 + n] = w0
    b1 = torch.zeros(m, n + 1, dtype=w1.dtype)
    b1[:, 1:] = w1
    if layout == "strides-differ":
        b1 = torch.zeros(m, n + 4, dtype=w1.dtype)
        b1[:, :n] = w1
        return b0[:, 3 : 3 + n], b1[:, :n]
    return b0[:, 3 : 3 + n], b1[:, 1:]


@pytest.mark.parametrize("case", list(_emulated_dm_cases()), ids=lambda c: c[0])
def test_emulated_diff_matmul_matches_float64(emulator, case):
    _, m, n, k, transpose, dtype, layout = case
    w0, w1 = _pair((m, n), dtype)
    v0, v1 = _layout(w0, w1, layout)
    x = torch.randn(m if transpose else n, k)
    out, plan = _emu_diff_matmul(emulator, v0, v1, x, transpose)
    assert _rel_err(out, _dm_want(w0, w1, x, transpose)) < RTOL
    # Same bits on a second run, and from contiguous copies; where those are 16-byte
    # aligned, with vector loads on one side and element loads on the other.
    again, _ = _emu_diff_matmul(emulator, w0.clone(), w1.clone(), x, transpose)
    assert torch.equal(out.view(torch.int32), again.view(torch.int32))
    if layout == "contiguous" and n * w0.element_size() % 16 == 0:
        u0, u1 = _layout(w0, w1, "unaligned")
        shifted, _ = _emu_diff_matmul(emulator, u0, u1, x, transpose)
        assert torch.equal(out.view(torch.int32), shifted.view(torch.int32))


def test_emulated_diff_matmul_splits(emulator):
    _, plan = _emu_diff_matmul(
        emulator, *_pair((150, 700), torch.bfloat16), torch.randn(700, 70), False
    )
    assert [p[0] for p in plan] == ["paramgeom_diff_matmul_bf16", "paramgeom_diff_matmul_final"]


def test_emulated_difference_is_formed_before_rounding(emulator):
    """Large equal parts cancel exactly: (w1 - w0) is formed from the stored values, so a
    difference of 1 ulp-scale survives where rounding w1 @ x and w0 @ x apart would not."""
    m, n, k = 33, 40, 4
    w0 = torch.full((m, n), 1024.0)
    w1 = w0.clone()
    w1[::2, ::3] += 2.0**-13  # 1 ulp of 1024 in fp32
    x = torch.randn(n, k)
    out, _ = _emu_diff_matmul(emulator, w0, w1, x, False)
    assert _rel_err(out, _dm_want(w0, w1, x, False)) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_x0", [False, True])
@pytest.mark.parametrize("g64", [False, True])
def test_emulated_gram_update_matches_float64(emulator, dtype, with_x0, g64):
    r, n = 53, 70
    x0, x = _pair((r, n), dtype)
    x = _layout(x, x, "unaligned")[1] if dtype == torch.float16 else x
    G = torch.randn(n, n, dtype=torch.float64 if g64 else torch.float32)
    G = G + G.T
    want = _gram_want(G, x, x0 if with_x0 else None, -0.5)
    _emu_gram(emulator, G, x, x0 if with_x0 else None, -0.5)
    assert _rel_err(G, want) < RTOL
    assert torch.equal(G, G.T), "G must stay exactly symmetric"


def test_emulated_gram_update_split_and_row_blocks(emulator):
    """A split-K plan, and two row blocks giving the Gram of the whole."""
    r, n = 600, 20
    x0, x = _pair((r, n), torch.bfloat16)
    G = torch.zeros(n, n)
    plan = _emu_gram(emulator, G, x, x0, 1.0)
    assert len(plan) == 2 and plan[1][0] == "paramgeom_gram_update_final"
    assert _rel_err(G, _gram_want(torch.zeros(n, n), x, x0, 1.0)) < RTOL
    H = torch.zeros(n, n, dtype=torch.float64)
    _emu_gram(emulator, H, x[:250], x0[:250], 1.0)
    _emu_gram(emulator, H, x[250:], x0[250:], 1.0)
    assert _rel_err(H, _gram_want(torch.zeros(n, n), x, x0, 1.0)) < RTOL


# --- on a GPU -------------------------------------------------------------------------------

IMPLS = {"cuda": cuda_backend, "cupy": cupy_backend}
GPU_DM_SHAPES = [(1, 1, 1), (19, 123, 5), (989, 123, 64), (123, 989, 70), (4096, 1000, 64)]


def _usable(backend: str) -> None:
    ok, reason = IMPLS[backend].status()
    if not ok:
        pytest.skip(f"{backend}: {reason}")


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "cupy"])
class TestOnGpu:
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape", GPU_DM_SHAPES, ids=str)
    @pytest.mark.parametrize("transpose", [False, True])
    def test_diff_matmul(self, backend, dtype, shape, transpose):
        _usable(backend)
        m, n, k = shape
        w0, w1 = _pair((m, n), dtype)
        x = torch.randn(m if transpose else n, k)
        out = torch.full((n if transpose else m, k), float("nan"), device="cuda")
        IMPLS[backend].diff_matmul(w0.cuda(), w1.cuda(), x.cuda(), transpose, out)
        assert _rel_err(out, _dm_want(w0, w1, x, transpose)) < RTOL

    @pytest.mark.parametrize("layout", ["strides-differ", "unaligned"])
    @pytest.mark.parametrize("transpose", [False, True])
    def test_diff_matmul_row_strided(self, backend, layout, transpose):
        _usable(backend)
        w0, w1 = _pair((300, 517), torch.bfloat16)
        v0, v1 = (t.cuda() for t in _layout(w0, w1, layout))
        x = torch.randn(300 if transpose else 517, 64)
        out = torch.empty((517 if transpose else 300, 64), device="cuda")
        IMPLS[backend].diff_matmul(v0, v1, x.cuda(), transpose, out)
        assert _rel_err(out, _dm_want(w0, w1, x, transpose)) < RTOL

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape", [(1, 1), (7, 19), (600, 20), (1000, 333)], ids=str)
    @pytest.mark.parametrize("with_x0", [False, True])
    @pytest.mark.parametrize("g_dtype", [torch.float32, torch.float64], ids=str)
    def test_gram_update(self, backend, dtype, shape, with_x0, g_dtype):
        _usable(backend)
        x0, x = _pair(shape, dtype)
        n = shape[1]
        G = torch.randn(n, n, dtype=g_dtype)
        G = G + G.T
        base = None if not with_x0 else x0.cuda()
        want = _gram_want(G, x, x0 if with_x0 else None, 0.25)
        g = G.cuda()
        IMPLS[backend].gram_update(g, x.cuda(), base, 0.25)
        assert _rel_err(g, want) < RTOL
        assert torch.equal(g, g.T)

    def test_bitwise_deterministic_and_backends_agree(self, backend):
        _usable(backend)
        w0, w1 = (t.cuda() for t in _pair((2048, 3001), torch.bfloat16))
        for transpose in (False, True):
            x = torch.randn(2048 if transpose else 3001, 64, device="cuda")
            outs = []
            for _ in range(3):
                out = torch.empty((3001 if transpose else 2048, 64), device="cuda")
                IMPLS[backend].diff_matmul(w0, w1, x, transpose, out)
                outs.append(out)
            assert all(torch.equal(o.view(torch.int32), outs[0].view(torch.int32)) for o in outs)
            if backend == "cupy" and cuda_backend.status()[0]:
                ref = torch.empty_like(outs[0])
                cuda_backend.diff_matmul(w0, w1, x, transpose, ref)
                assert torch.equal(ref.view(torch.int32), outs[0].view(torch.int32))
