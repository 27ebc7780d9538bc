"""Launch-size helpers shared by the Triton kernels.

Every size chosen here depends on the problem shape alone (never on the GPU model or on
timings), so the reduction order, and with it every output bit, is fixed by the shape.
"""

from __future__ import annotations

from dataclasses import dataclass

# Elements in one [BLOCK_R, BLOCK_C] tile: one trip of a kernel's inner loop.
TILE_ELEMS = 1024
# Elements a program walks (its share of the work) before writing its partial.
PROGRAM_ELEMS = 1 << 16
# Narrowest tile row: short rows are packed several to a tile instead.
MIN_BLOCK_C = 16
# Row width a contiguous run is cut into (its last, shorter piece is launched apart).
FLAT_WIDTH = TILE_ELEMS
# CUDA caps grid dimensions 1 and 2 at 65535 programs (dimension 0 at 2^31 - 1).
MAX_GRID_Y = 65535


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def num_warps_for(tile_elems: int) -> int:
    """Warps per program: 4 tile elements per thread, between 1 and 8 warps.

    Few elements per thread, since each carries a dozen fp64/int32 lane accumulators
    (about 100 registers at 4 per thread; 8 per thread costs about 170 and occupancy).
    """
    return max(1, min(8, tile_elems // 128))


@dataclass(frozen=True)
class Plan2D:
    """How a (rows, cols) walk is cut into programs.

    Program ``(i, j)`` takes rows ``[i * rows_per_prog, (i + 1) * rows_per_prog)`` and columns
    ``[j * cols_per_prog, (j + 1) * cols_per_prog)``, ``BLOCK_R x BLOCK_C`` at a time (rows
    outer, columns inner). ``grid = (row_programs, col_programs)``.
    """

    block_r: int
    block_c: int
    rows_per_prog: int
    cols_per_prog: int
    grid: tuple[int, int]
    num_warps: int

    @property
    def num_programs(self) -> int:
        return self.grid[0] * self.grid[1]


def plan_2d(rows: int, cols: int) -> Plan2D:
    """Tile and program sizes for a row-major walk over ``rows x cols`` elements.

    Tiles hold ``TILE_ELEMS`` elements, as wide as the rows allow (up to the whole tile);
    a program covers about ``PROGRAM_ELEMS`` elements, splitting long rows across
    ``grid[1]`` column programs and stacking short rows into one row program.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"plan_2d needs a non-empty shape, got ({rows}, {cols})")
    block_c = max(MIN_BLOCK_C, min(TILE_ELEMS, next_power_of_2(cols)))
    block_r = max(1, min(TILE_ELEMS // block_c, next_power_of_2(rows)))
    col_tiles = cdiv(cols, block_c)
    tiles_per_prog = max(1, PROGRAM_ELEMS // (block_r * block_c))
    # Columns first: a program takes up to tiles_per_prog column tiles of its rows...
    col_tiles_per_prog = min(col_tiles, tiles_per_prog)
    col_progs = cdiv(col_tiles, col_tiles_per_prog)
    if col_progs > MAX_GRID_Y:
        col_tiles_per_prog = cdiv(col_tiles, MAX_GRID_Y)
        col_progs = cdiv(col_tiles, col_tiles_per_prog)
    # ...and, when the rows are short, several row blocks as well.
    row_blocks_per_prog = max(1, tiles_per_prog // col_tiles_per_prog)
    row_blocks_per_prog = min(row_blocks_per_prog, cdiv(rows, block_r))
    rows_per_prog = row_blocks_per_prog * block_r
    cols_per_prog = col_tiles_per_prog * block_c
    return Plan2D(
        block_r=block_r,
        block_c=block_c,
        rows_per_prog=rows_per_prog,
        cols_per_prog=cols_per_prog,
        grid=(cdiv(rows, rows_per_prog), col_progs),
        num_warps=num_warps_for(block_r * block_c),
    )


# ---------------------------------------------------------------------------------------
# GEMM-shaped kernels (diff_matmul, gram_update): fp32 CUDA-core dots (input_precision
# "ieee"), so tiles are moderate. A reduction is split across programs only when the
# output tiles alone would leave the GPU idle; the splits' fp32 partials are then summed
# in float64, in split order (deterministic, and "fp64 across blocks").

# Programs a launch aims for before it splits the reduction dimension.
TARGET_PROGRAMS = 512
# A split walks at least this many BLOCK_K steps.
MIN_STEPS_PER_SPLIT = 8


@dataclass(frozen=True)
class GemmPlan:
    """Tiles of one GEMM-shaped launch: ``out[M, N] = sum over K``, ``split`` ways in K.

    Split ``s`` takes K steps ``[s * steps_per_split, (s + 1) * steps_per_split)`` of
    ``block_k`` each.
    """

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    split: int
    steps_per_split: int
    num_warps: int
    num_stages: int


def gemm_plan(m: int, n: int, k: int, *, block_m: int = 64, block_k: int = 32) -> GemmPlan:
    """Tiles for ``out[m, n] = A[m, k] @ B[k, n]`` (all sizes >= 1); ``n`` is usually narrow
    (the k columns of a sketch), so ``block_n`` shrinks to it (16 at least, for tl.dot)."""
    if m < 1 or n < 1 or k < 1:
        raise ValueError(f"gemm_plan needs positive sizes, got ({m}, {n}, {k})")
    block_n = max(16, min(64, next_power_of_2(n)))
    block_m = max(16, min(block_m, next_power_of_2(m)))
    block_k = max(16, min(block_k, next_power_of_2(k)))
    tiles = cdiv(m, block_m) * cdiv(n, block_n)
    steps = cdiv(k, block_k)
    split = max(1, min(cdiv(TARGET_PROGRAMS, tiles), steps // MIN_STEPS_PER_SPLIT))
    steps_per_split = cdiv(steps, split)
    split = cdiv(steps, steps_per_split)
    return GemmPlan(
        block_m=block_m,
        block_n=block_n,
        block_k=block_k,
        group_m=8,
        split=split,
        steps_per_split=steps_per_split,
        num_warps=4,
        num_stages=3,
    )
