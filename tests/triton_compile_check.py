"""Compile every Triton kernel variant that the dispatch launches, for sm_90, with no GPU.

Run as a script, in a fresh process (``tests/test_triton_compile.py`` does, once with the
test venv's Triton and once with each pinned release): Triton's interpreter, which the
tests use without a GPU, accepts code that the compiler rejects, and a process that
imported the kernels in interpreter mode cannot compile them.

How: a stand-in active driver reports an sm_90 target (``GPUTarget("cuda", 90, 32)``),
device 0 and stream 0 and can launch nothing; each kernel object of
``paramgeom.triton_kernels`` is replaced by one whose ``kernel[grid](...)`` is
``kernel.warmup(..., grid=grid)`` (compile, do not launch). The public launchers
(``diff_stats_triton``, ``diff_matmul_triton``, ``gram_update_triton``) are then called on
CPU tensors laid out as the API lays them out, so every compile sees the dtypes, integer
and alignment specialisations, block sizes, warps and options that a GPU run would. Each
kernel is compiled through to the cubin (Triton's bundled ptxas), and checked for what
only the compiled code shows: no flush-to-zero (the fp16/fp8 decoders need fp32
subnormals) and shared memory within sm_90's per-block limit.

Prints one line per compiled kernel and ``compiled N kernels for sm_90 with triton X``;
exits 1 listing every failing case.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("", "0", "false", "off"):
    sys.exit("triton_compile_check.py: unset TRITON_INTERPRET (it compiles, never interprets)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from paramgeom._backends import triton as triton_backend  # noqa: E402
from paramgeom.api.diff_matmul import weight_views  # noqa: E402
from paramgeom.api.diff_stats import make_job, make_scaled_job  # noqa: E402
from paramgeom.checkpoints.fp8 import quantize_blocks  # noqa: E402
from paramgeom.triton_kernels import diff_matmul, diff_stats, gram_update  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
# Shared memory one block may use on sm_90 (227 KB, with the opt-in).
SM90_MAX_SHARED = 232448


class OfflineCUDADriver(DriverBase):
    """The active driver of a process that compiles for sm_90 and runs nothing."""

    @classmethod
    def is_active(cls):
        return False  # never picked by Triton's own driver discovery

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError("offline driver: no launcher")

    def get_current_target(self):
        return TARGET

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        raise NotImplementedError("offline driver: nothing runs")

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0


class CompileFailedError(Exception):
    pass


class WarmUpOnly:
    """Stands in for a ``JITFunction``: ``self[grid](...)`` compiles and records."""

    def __init__(self, fn, seen: dict):
        self.fn = fn
        self.seen = seen

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            try:
                kernel = self.fn.warmup(*args, grid=grid, **kwargs)
            except Exception as exc:
                raise CompileFailedError(_summary(exc)) from exc
            if id(kernel) not in self.seen:
                self.seen[id(kernel)] = kernel
                _check_binary(kernel, self.fn.__name__, kwargs)

        return launch


def _summary(exc: BaseException) -> str:
    """The compiler's message: the kernel source up to the error, and the error's cause."""
    lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    text = "\n".join([*lines[:1], *lines[1:][-12:]])
    cause = exc.__cause__
    while cause is not None:
        text += f"\n{type(cause).__name__}: {cause}".rstrip()
        cause = cause.__cause__
    return text


def _check_binary(kernel, name: str, kwargs: dict) -> None:
    asm = kernel.asm
    for stage in ("ttir", "ttgir", "llir", "ptx", "cubin"):
        if stage not in asm:
            raise CompileFailedError(f"{name}: no {stage} stage")
    if ".ftz" in asm["ptx"]:
        raise CompileFailedError(
            f"{name}: flush-to-zero in the PTX (fp32 subnormals would be lost)"
        )
    shared = getattr(kernel.metadata, "shared", 0)
    if shared > SM90_MAX_SHARED:
        raise CompileFailedError(
            f"{name}: {shared} bytes of shared memory > {SM90_MAX_SHARED} on sm_90"
        )
    consts = {k: v for k, v in kwargs.items() if k.isupper()}
    opts = {k: v for k, v in kwargs.items() if not k.isupper()}
    print(f"  ok {name} {consts} {opts} shared={shared}", flush=True)


# ------------------------------------------------------------------------- the cases


def _pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(shape, generator=g)
    return w0.to(dtype), (w0 + 0.01 * torch.randn(shape, generator=g)).to(dtype)


DIFF_STATS_DTYPES = [
    torch.float32,
    torch.bfloat16,
    torch.float16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]
TOLERANCES = {  # (rel_tols, abs_tols): the API default, none, abs only, mixed, the maximum
    "default": ((1e-3,), ()),
    "none": ((), ()),
    "abs-only": ((), (1e-5,)),
    "mixed": ((1e-3, 2.0**-8), (1e-5, 1e-2, 0.0)),
    "8+8": (tuple(2.0**-k for k in range(8)), tuple(10.0**-k for k in range(8))),
}


def _diff_stats(w0, w1, tols="default", cast=None, per_row=False):
    """What ``paramgeom.diff_stats`` hands the triton backend for these inputs."""
    rel, abs_ = TOLERANCES[tols]
    job = make_job(w0, w1, rel, abs_, cast, per_row)
    diff_stats.diff_stats_triton(
        job.w0, job.w1, job.dtype_code, rel, abs_, job.cast_bf16, job.per_row
    )


def diff_stats_cases():
    # Every storage dtype, with and without the bf16 cast (bf16 itself never casts), for
    # totals (a contiguous run: full 1024-wide rows plus a 1-row tail) and per row.
    for dtype in DIFF_STATS_DTYPES:
        for cast in (None, "bf16") if dtype != torch.bfloat16 else (None,):
            for per_row in (False, True):
                w0, w1 = _pair((3, 1100), dtype)
                label = f"diff_stats {dtype} cast={cast} per_row={per_row}"
                yield (
                    label,
                    lambda w0=w0, w1=w1, c=cast, p=per_row: _diff_stats(w0, w1, cast=c, per_row=p),
                )
    # Every tolerance set (0..8 relative and absolute), both ways, across the dtypes.
    for i, tols in enumerate(t for t in TOLERANCES if t != "default"):
        dtype = DIFF_STATS_DTYPES[i % len(DIFF_STATS_DTYPES)]
        for per_row in (False, True):
            w0, w1 = _pair((9, 31), dtype)
            yield (
                f"diff_stats {dtype} tols={tols} per_row={per_row}",
                lambda w0=w0, w1=w1, t=tols, p=per_row: _diff_stats(w0, w1, t, per_row=p),
            )
    # Layouts: row slices of wider tensors (row strides 32 and 40, not 16-aligned ones),
    # a long row split over column programs, short rows packed into a tile, one column,
    # a 0-d tensor, and a non-contiguous walk over several programs.
    big0, _ = _pair((4, 32), torch.bfloat16, seed=1)
    _, big1 = _pair((4, 40), torch.bfloat16, seed=2)
    for per_row in (False, True):
        yield (
            f"diff_stats row slices per_row={per_row}",
            lambda p=per_row: _diff_stats(big0[:, :19], big1[:, 3:22], per_row=p),
        )
    shapes = {"column split": (2, 70000), "short rows": (300, 37), "one column": (19, 1)}
    for name, shape in shapes.items():
        w0, w1 = _pair(shape, torch.float16)
        yield (
            f"diff_stats {name} {shape} per_row=True",
            lambda w0=w0, w1=w1: _diff_stats(w0, w1, per_row=True),
        )
    w0, w1 = _pair((), torch.float32)
    yield "diff_stats 0-d", lambda: _diff_stats(w0, w1)
    b0, b1 = _pair((70, 1100), torch.float16, seed=3)
    yield "diff_stats strided multi-program", lambda: _diff_stats(b0[:, 5:1035], b1[:, :1030])
    # Block-scaled fp8 as stored (the engine's read of FP8 checkpoints): both formats, one
    # and up to 8 tolerances, totals and per row, a row block starting mid scale block.
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        for tols in ("default", "8+8"):
            for per_row in (False, True):
                yield (
                    f"diff_stats scaled {dtype} tols={tols} per_row={per_row}",
                    lambda d=dtype, t=tols, p=per_row: _diff_stats_scaled(d, t, p),
                )
    yield (
        "diff_stats scaled row block",
        lambda: _diff_stats_scaled(torch.float8_e4m3fn, "default", True, rows=(100, 260)),
    )


def _diff_stats_scaled(dtype, tols, per_row, rows=(0, 300)):
    """What ``paramgeom.diff_stats(..., scale_inv=...)`` runs on the triton backend."""
    w0, w1 = _pair((300, 1100), torch.float32, seed=4)
    (q0, s0), (q1, s1) = quantize_blocks(w0, dtype), quantize_blocks(w1, dtype)
    rel, abs_ = TOLERANCES[tols]
    a, b = rows
    job = make_scaled_job(q0[a:b], q1[a:b], (s0, s1), a, rel, abs_, per_row)
    triton_backend.diff_stats(job)


def _diff_matmul(w0, w1, x, transpose=False):
    """What ``paramgeom.diff_matmul`` hands the triton backend for these inputs."""
    v0, v1, flipped = weight_views(w0, w1)
    t = transpose != flipped
    rows = v0.shape[1] if t else v0.shape[0]
    out = torch.empty(rows, x.shape[1])
    diff_matmul.diff_matmul_triton(v0, v1, x.float().contiguous(), t, out)


def diff_matmul_cases():
    for dtype in diff_matmul.WEIGHT_DTYPES:
        for transpose in (False, True):
            w0, w1 = _pair((123, 989), dtype)
            x = torch.randn(123 if transpose else 989, 16)
            yield (
                f"diff_matmul {dtype} transpose={transpose}",
                lambda w0=w0, w1=w1, x=x, t=transpose: _diff_matmul(w0, w1, x, t),
            )
    # Tile sizes (16 to 64), a single column and row, a K split over programs, and
    # layouts: column-major weights (read as the transpose), strided row slices.
    shapes = {"one row, k=1": ((1, 123), 1), "k=64": ((19, 989), 64), "split K": ((64, 4096), 8)}
    for name, (shape, k) in shapes.items():
        w0, w1 = _pair(shape, torch.bfloat16)
        x = torch.randn(shape[1], k)
        yield f"diff_matmul {name} {shape}", lambda w0=w0, w1=w1, x=x: _diff_matmul(w0, w1, x)
    big0, big1 = _pair((60, 250), torch.float16, seed=3)
    for transpose in (False, True):
        for name, (w0, w1) in {
            "column-major": (big0[:, :123].T, big1[:, 7:130].T),
            "row slices": (big0[::2, 3:126], big1[1::2, 100:223]),
        }.items():
            x = torch.randn(w0.shape[0] if transpose else w0.shape[1], 9)
            yield (
                f"diff_matmul {name} transpose={transpose}",
                lambda w0=w0, w1=w1, x=x, t=transpose: _diff_matmul(w0, w1, x, t),
            )


def gram_update_cases():
    # Input dtypes, with and without x0, into float32 and float64 G (the GPU accumulators),
    # direct (G updated in the kernel) and row-split (fp32 partials).
    for dtype in gram_update.INPUT_DTYPES:
        for with_x0 in (True, False):
            for shape in ((40, 70), (989, 19)):
                for g_dtype in (torch.float32, torch.float64):
                    x, x0 = _pair(shape, dtype)
                    G = torch.zeros(shape[1], shape[1], dtype=g_dtype)
                    yield (
                        f"gram_update {dtype} x0={with_x0} {shape} G {g_dtype}",
                        lambda G=G, x=x, x0=x0 if with_x0 else None: gram_update.gram_update_triton(
                            G, x, x0, -0.75
                        ),
                    )
    # Tile sizes (16, 32, 64 square; 16 and 32 rows a step) and strided row slices.
    big, big0 = _pair((80, 150), torch.float16, seed=2)
    for name, (x, x0) in {
        "one row": (big[:1, :5], big0[:1, 5:10]),
        "row slices": (big[::3, 5:75], big0[1::3, 70:140]),
        "wide": (big[:20, :150], None),
    }.items():
        n = x.shape[1]
        G = torch.zeros(n, n, dtype=torch.float64)
        yield (
            f"gram_update {name} {tuple(x.shape)}",
            lambda G=G, x=x, x0=x0: gram_update.gram_update_triton(G, x, x0, 0.5),
        )


def main() -> int:
    start = time.perf_counter()
    driver.set_active(OfflineCUDADriver())
    seen: dict = {}
    for module, name in (
        (diff_stats, "_diff_stats_kernel"),
        (diff_matmul, "_diff_matmul_kernel"),
        (gram_update, "_gram_update_kernel"),
    ):
        fn = getattr(module, name)
        if not isinstance(fn, triton.runtime.JITFunction):
            sys.exit(f"{module.__name__}.{name} is not a JITFunction (interpreter on?)")
        setattr(module, name, WarmUpOnly(fn, seen))
        # Let CPU tensors through the launchers' "GPU tensors only" guard: nothing runs.
        module.INTERPRETED = True
    failures = []
    cases = [*diff_stats_cases(), *diff_matmul_cases(), *gram_update_cases()]
    for label, call in cases:
        print(label, flush=True)
        try:
            call()
        except CompileFailedError as exc:
            failures.append((label, str(exc)))
            print("  FAILED", flush=True)
    elapsed = time.perf_counter() - start
    version = triton.__version__
    print(f"compiled {len(seen)} kernels for sm_90 with triton {version} in {elapsed:.0f} s")
    if failures:
        print(f"{len(failures)} of {len(cases)} cases failed to compile:", file=sys.stderr)
        print("\n".join(f"  {label}" for label, _ in failures), file=sys.stderr)
        errors = dict.fromkeys(message for _, message in failures)
        print(f"\n{len(errors)} distinct errors:\n", file=sys.stderr)
        print("\n\n".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
