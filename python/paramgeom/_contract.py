"""The numbers that cross between Python and the compiled kernels, written once.

Dtype codes, status codes, the layout of the diff-statistics output vectors and the
linear-algebra epilogue modes are part of every binding's ABI: Python passes them and reads
results by them, the C++ / CUDA kernels switch on them, and NVRTC compiles them into the
cupy backend's modules. This table is their only definition. The build renders it into the
C++ header ``paramgeom/contract.h`` (CMake runs ``python _contract.py header OUT`` at
configure time), the cupy backend hands NVRTC the same text as an in-memory header
(:func:`render_header`), and Python reads the constants below.

What does *not* live here: how a kernel is launched (grid sizes, tiles, workspace layout).
Those are decisions of one kernel and live beside it in its C++ plan header
(``paramgeom/diff_stats_plan.h``, ``paramgeom/linalg_tiles.h``); the always-built CPU module
``paramgeom._C`` exports them (``diff_stats_plan``, ``linalg_plan``) to the cupy backend.

Standard library only: CMake runs this file with the build environment's Python, before
anything is installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Storage dtypes the kernels read.
FLOAT32 = 0
BFLOAT16 = 1
FLOAT16 = 2
FLOAT8_E4M3 = 3
FLOAT8_E5M2 = 4

# Error codes of every host launcher.
OK = 0
BAD_DTYPE = 1
BAD_ARGUMENT = 2
OUT_OF_MEMORY = 3
CUDA_ERROR = 4

MAX_TOLS = 8  # tolerances per kind (relative, absolute) in one diff_stats pass
GROUP_ELEMS = 1 << 16  # elements per reduction group: fixes the order of every sum
SCALE_BLOCK = 128  # block-scaled FP8: one scale per SCALE_BLOCK x SCALE_BLOCK block

# The diff_stats totals: an int64 vector of NUM_COUNTS counts ...
COUNT = 0
EQUAL = 1
NONFINITE0 = 2
NONFINITE1 = 3
REL0 = 4
ABS0 = REL0 + MAX_TOLS
NUM_COUNTS = ABS0 + MAX_TOLS
# ... and a float64 vector of NUM_SUMS sums over finite pairs.
SUM_SQ_DELTA = 0
SUM_SQ_W0 = 1
SUM_SQ_W1 = 2
SUM_W0W1 = 3
MAX_ABS_DELTA = 4
NUM_SUMS = 5

# What a linear-algebra kernel does with a finished value v of C(p, q).
STORE = 0
PARTIAL = 1
ACCUMULATE32 = 2
ACCUMULATE64 = 3

# The CUDA kernel sources (csrc/cuda): nvcc builds them into paramgeom._C_cuda, the wheel
# ships them (paramgeom/_csrc) and the cupy backend compiles them with NVRTC.
CUDA_KERNEL_SOURCES = {
    "diff_stats": "diff_stats_kernels.cuh",
    "diff_matmul": "diff_matmul_kernels.cuh",
    "gram_update": "gram_update_kernels.cuh",
}

# The C++ side: (enum, namespace, doc, ((C++ name, value, comment), ...)).
_ENUMS = (
    (
        "DType",
        "paramgeom",
        "Storage dtypes the kernels read.",
        (
            ("kFloat32", FLOAT32, ""),
            ("kBFloat16", BFLOAT16, ""),
            ("kFloat16", FLOAT16, ""),
            ("kFloat8E4M3", FLOAT8_E4M3, "float8_e4m3fn: no infinities, S.1111.111 is NaN"),
            ("kFloat8E5M2", FLOAT8_E5M2, "float8_e5m2: the top byte of an IEEE half"),
        ),
    ),
    (
        "Status",
        "paramgeom",
        "Error codes returned by every host launcher.",
        (
            ("kOk", OK, "success"),
            ("kBadDType", BAD_DTYPE, ""),
            ("kBadArgument", BAD_ARGUMENT, ""),
            ("kOutOfMemory", OUT_OF_MEMORY, ""),
            ("kCudaError", CUDA_ERROR, ""),
        ),
    ),
    (
        "CountIndex",
        "paramgeom",
        "Indices of the diff_stats int64 counts.",
        (
            ("kCount", COUNT, "elements"),
            ("kEqual", EQUAL, "a == b"),
            ("kNonFinite0", NONFINITE0, "non-finite a"),
            ("kNonFinite1", NONFINITE1, "non-finite b"),
            ("kRel0", REL0, "within relative tolerance i: kRel0 + i"),
            ("kAbs0", ABS0, "within absolute tolerance i: kAbs0 + i"),
            ("kNumCounts", NUM_COUNTS, ""),
        ),
    ),
    (
        "SumIndex",
        "paramgeom",
        "Indices of the diff_stats float64 sums (finite pairs only).",
        (
            ("kSumSqDelta", SUM_SQ_DELTA, "sum (b - a)^2"),
            ("kSumSqW0", SUM_SQ_W0, "sum a^2"),
            ("kSumSqW1", SUM_SQ_W1, "sum b^2"),
            ("kSumW0W1", SUM_W0W1, "sum a * b"),
            ("kMaxAbsDelta", MAX_ABS_DELTA, "max |b - a|"),
            ("kNumSums", NUM_SUMS, ""),
        ),
    ),
    (
        "Epilogue",
        "paramgeom::linalg",
        "What a linear-algebra kernel does with a finished value v of C(p, q).",
        (
            ("kStore", STORE, "out (fp32)[p, q] = v"),
            ("kPartial", PARTIAL, "workspace (fp32)[split, p, q] = v (main kernel only)"),
            ("kAccumulate32", ACCUMULATE32, "out (fp32) = fp32(fp64(out) + alpha * fp64(v))"),
            ("kAccumulate64", ACCUMULATE64, "out (fp64) = out + alpha * fp64(v)"),
        ),
    ),
)

HEADER_NAME = "paramgeom/contract.h"


def render_header() -> str:
    """The C++ header ``paramgeom/contract.h``: this table as enums and constants. It
    includes nothing (NVRTC-safe) and is included by ``paramgeom/common.h``, which defines
    ``pg_i64`` first."""
    lines = [
        f"// {HEADER_NAME}: GENERATED from python/paramgeom/_contract.py by the build.",
        "// Do not edit: change the table there. The numbers that cross between Python and",
        "// the kernels (dtype and status codes, the diff_stats output layout, linear-algebra",
        "// epilogue modes). Included by common.h after its scalar typedefs; NVRTC-safe.",
        "#pragma once",
        "",
    ]
    namespace = None
    for name, ns, doc, table in _ENUMS:
        if ns != namespace:
            if namespace is not None:
                lines += ["}" * namespace.count("::") + "}" + f"  // namespace {namespace}", ""]
            lines += [" ".join(f"namespace {part} {{" for part in ns.split("::")), ""]
            namespace = ns
        if name == "CountIndex":
            lines += [
                f"constexpr int kMaxTols = {MAX_TOLS};",
                f"constexpr pg_i64 kGroupElems = {GROUP_ELEMS};",
                f"constexpr pg_i64 kScaleBlock = {SCALE_BLOCK};",
                "",
            ]
        lines.append(f"// {doc}")
        lines.append(f"enum {name} : int {{")
        for cpp_name, value, comment in table:
            lines.append(f"  {cpp_name} = {value},{'  // ' + comment if comment else ''}")
        lines += ["};", ""]
    lines += ["}" * namespace.count("::") + "}" + f"  // namespace {namespace}", ""]
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    """``header OUT``: write the header to OUT when its text changed (so an unchanged table
    rebuilds nothing); ``cuda-sources``: print the kernel sources, ';'-separated (a CMake
    list)."""
    if len(argv) == 2 and argv[0] == "header":
        out = Path(argv[1])
        text = render_header()
        if not out.is_file() or out.read_text() != text:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        return 0
    if argv == ["cuda-sources"]:
        sys.stdout.write(";".join(CUDA_KERNEL_SOURCES.values()))
        return 0
    sys.stderr.write("usage: _contract.py header OUT | cuda-sources\n")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
