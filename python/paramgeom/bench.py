"""``paramgeom bench``: every kernel on every usable backend against the plain-torch way of
getting the same numbers and against the hardware limit measured in the same run.

Cases: diff_stats, diff_matmul, gram_update, randomized_svd and a streaming-sketch update.
Limits: memory bandwidth from ``copy_`` of a large buffer (bytes read + written / time) and
GEMM peak from one large ``torch.matmul`` (fp32 on CPU, bf16 on CUDA) and, on CPU, the fp32
FMA throughput of a register-only loop (products are reported against the larger of the
two). Every case checks
its answer against a reference before it is timed: a fast wrong answer fails the bench.
Timing: warm-up, then providers interleaved round by round (drift in a shared machine hits
all of them alike), medians with p20-p80. The cases are built by :func:`case_builders`,
which the pytest-benchmark suite ``benchmarks/bench_cases.py`` times too; the sweep scripts
in ``benchmarks/`` use the same timing helpers.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import paramgeom

__all__ = [
    "PROFILES",
    "Case",
    "Row",
    "WrongAnswerError",
    "case_builders",
    "machine",
    "once",
    "quantile",
    "run",
    "time_interleaved",
    "usable_backends",
]


def once(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds for one call of ``fn`` (synchronising CUDA before and after)."""
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def quantile(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def time_interleaved(fns: dict, reps: int, device: str = "cpu") -> dict[str, list[float]]:
    """``reps`` timings of every provider, one round of all providers at a time."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(once(fn, device))
    return times


def machine() -> dict:
    """Date, platform, versions, usable backends, GPU and git revision of this run."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except OSError:
        sha = ""
    info = paramgeom.backends()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "paramgeom": paramgeom.__version__,
        "threads": torch.get_num_threads(),
        "backends": {k: v.reason for k, v in info.items() if v.available},
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git": sha,
    }


@dataclass
class Row:
    """One provider on one case: time, throughput, fraction of the limit, speed-up."""

    op: str
    case: str
    provider: str
    p50_ms: float
    p20_ms: float
    p80_ms: float
    gbps: float
    tflops: float
    pct_of_limit: float
    speedup_vs_torch: float | None = None
    extra: dict = field(default_factory=dict)


def _limits(device: str, quick: bool) -> dict[str, float]:
    """Copy bandwidth (GB/s, read + write) and GEMM peak (TFLOP/s) measured now."""
    n = (1 << 25) if quick else (1 << 27)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = statistics.median(time_interleaved({"copy": lambda: dst.copy_(src)}, 7, device)["copy"])
    size = 2048 if device == "cpu" else 8192
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    tg = statistics.median(time_interleaved({"mm": lambda: a @ b}, 5, device)["mm"])
    gemm = 2 * size**3 / tg / 1e12
    fma = _fma_peak_tflops() if device == "cpu" else 0.0
    return {
        "copy_gbps": 2 * src.nbytes / t / 1e9,
        "gemm_tflops": gemm,
        "fma_tflops": fma,
        "compute_tflops": max(gemm, fma),
    }


def _fma_peak_tflops() -> float:
    """fp32 FMA throughput of this CPU from a register-only AVX-512 loop on every thread
    (best of 3; 0 without AVX-512). The library GEMM is not the limit here: on AMD CPUs
    the one torch calls can run an AVX2 path at half of it."""
    from paramgeom import _native

    module, _ = _native.load("_C")
    if module is None:
        return 0.0
    threads = torch.get_num_threads()
    return max(module.fma_peak_gflops(20_000_000, threads) for _ in range(3)) / 1e3


class WrongAnswerError(AssertionError):
    """A provider returned a wrong answer."""


@dataclass
class Case:
    """One benchmark case: providers that compute the same thing, each checked against a
    reference when the case is built (a fast wrong answer is never timed).

    ``baseline`` names the plain-torch way of getting the same numbers (speed-ups are
    against it); ``primary`` is what paramgeom's own dispatch would run (the first
    non-torch provider). ``nbytes`` / ``flop``, the same for every provider (they all do
    the same work), give GB/s and TFLOP/s (0: not reported);
    ``compute_share`` is the fraction of the compute limit the case can reach (0.5 for the
    CPU's float64 Gram: 8 lanes per FMA instead of 16).
    """

    op: str
    label: str
    providers: dict[str, Callable[[], object]]
    baseline: str
    nbytes: int = 0
    flop: float = 0
    compute_share: float = 1.0

    @property
    def primary(self) -> str:
        return next(k for k in self.providers if not k.startswith("torch"))


# Sizes per profile: diff_stats element counts, and the (m, n) of the matrix cases.
PROFILES: dict[str, tuple[list[int], tuple[int, int]]] = {
    "smoke": ([100_000], (128, 512)),
    "quick": ([1_000_000, 10_000_000], (1024, 4096)),
    "full": ([1_000_000, 10_000_000, 100_000_000], (4096, 14336)),
}
PRODUCT_K = 64  # columns of the diff_matmul test matrix (the --rank 64 range finder's width)
SVD_K = 8  # triplets of the randomized_svd case


def _rows(case: Case, times: dict[str, list[float]], limits: dict) -> list[Row]:
    med = {k: statistics.median(v) for k, v in times.items()}
    out = []
    for k, v in times.items():
        gbps = case.nbytes / med[k] / 1e9
        tflops = case.flop / med[k] / 1e12
        pct = (
            100 * tflops / (limits["compute_tflops"] * case.compute_share)
            if case.flop
            else 100 * gbps / limits["copy_gbps"]
        )
        speedup = med[case.baseline] / med[k] if not k.startswith("torch") else None
        out.append(
            Row(case.op, case.label, k, 1e3 * med[k], 1e3 * quantile(v, 0.2),
                1e3 * quantile(v, 0.8), gbps, tflops, pct, speedup)
        )  # fmt: skip
    return out


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise WrongAnswerError(f"wrong answer: {what}")


def _rel_idiom(w0: torch.Tensor, w1: torch.Tensor, eta: float = 1e-3) -> int:
    """What analysis scripts write today for the paper's rule: fp32 temporaries."""
    a, b = w0.float(), w1.float()
    return int(((b - a).abs() <= eta * torch.maximum(a.abs(), b.abs())).sum())


def _diff_stats_case(device: str, backends: list[str], dname: str, n: int) -> Case:
    """Each backend (checked against torch's counts first) and the torch ways."""
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dname]
    g = torch.Generator().manual_seed(0)
    w0 = (0.02 * torch.randn(n, generator=g)).to(dtype)
    w1 = torch.where(torch.rand(n, generator=g) < 0.5, w0.float() * 1.01, w0.float())
    w0, w1 = w0.to(device), w1.to(dtype).to(device)
    want_eq = int(torch.count_nonzero(w0 == w1))
    fns = {}
    for be in backends:
        s = paramgeom.diff_stats(w0, w1, backend=be)
        _check(s.n_equal == want_eq, f"diff_stats[{be}] equal count")
        _check(s.n_within_rel[0] == _rel_idiom(w0, w1) or dtype == torch.float32,
               f"diff_stats[{be}] relative count")  # fmt: skip
        fns[be] = lambda be=be: paramgeom.diff_stats(w0, w1, backend=be)
    fns["torch_rel_idiom"] = lambda: _rel_idiom(w0, w1)
    fns["torch_count_nonzero_eq"] = lambda: int(torch.count_nonzero(w0 == w1))
    return Case("diff_stats", f"{dname} n={n:.0e}", fns, "torch_rel_idiom",
                nbytes=2 * w0.nbytes)  # fmt: skip


def _weights(shape: tuple[int, int], device: str, seed: int):
    """A bf16 pair whose difference is a rank-8 update well above the bf16 rounding noise:
    a spectrum the range finder and svd_lowrank can both resolve, so the accuracy checks
    mean something."""
    m, n = shape
    g = torch.Generator().manual_seed(seed)
    w0 = (0.02 * torch.randn(m, n, generator=g)).to(torch.bfloat16).to(device)
    low_rank = torch.randn(m, 8, generator=g) @ torch.randn(8, n, generator=g)
    w1 = (w0.float() + 1e-3 * low_rank.to(device)).to(torch.bfloat16)
    return w0, w1, g


def _diff_matmul_case(device: str, backends: list[str], shape: tuple[int, int]) -> Case:
    m, n = shape
    w0, w1, g = _weights(shape, device, 1)
    x = torch.randn(n, PRODUCT_K, generator=g).to(device)
    want = (w1.double() - w0.double()) @ x.double()
    fns = {}
    for be in backends:
        got = paramgeom.diff_matmul(w0, w1, x, backend=be).double()
        err = torch.linalg.norm(got - want)
        _check(err <= 1e-5 * torch.linalg.norm(want), f"diff_matmul[{be}]")
        fns[be] = lambda be=be: paramgeom.diff_matmul(w0, w1, x, backend=be)
    fns["torch_materialise"] = lambda: (w1.float() - w0.float()) @ x
    d = w1.float() - w0.float()
    fns["torch_gemm_only"] = lambda: d @ x
    return Case("diff_matmul", f"bf16 {m}x{n} k={PRODUCT_K}", fns, "torch_materialise",
                nbytes=2 * w0.nbytes, flop=2 * m * n * PRODUCT_K)  # fmt: skip


def _gram_update_case(device: str, backends: list[str], shape: tuple[int, int]) -> Case:
    m, n = shape
    w0, w1, _ = _weights(shape, device, 1)
    r, c = n // 4, m // 8
    xg = w1[:r, :c].contiguous()
    x0g = w0[:r, :c].contiguous()
    acc = torch.float64 if device == "cpu" else torch.float32
    dd = xg.double() - x0g.double()
    want_g = dd.T @ dd
    fns = {}
    for be in backends:
        G = torch.zeros(c, c, dtype=acc, device=device)
        paramgeom.gram_update(G, xg, x0g, backend=be)
        _check(torch.linalg.norm(G.double() - want_g) <= 1e-5 * torch.linalg.norm(want_g),
               f"gram_update[{be}]")  # fmt: skip
        G = torch.zeros(c, c, dtype=acc, device=device)
        fns[be] = lambda be=be, G=G: paramgeom.gram_update(G, xg, x0g, backend=be)
    Gt = torch.zeros(c, c, dtype=acc, device=device)

    def materialise():
        d = xg.to(acc) - x0g.to(acc)
        Gt.addmm_(d.T, d)

    fns["torch_materialise"] = materialise
    # A Gram is symmetric: r n (n + 1) flops is the work it needs (what SYRK and the CPU
    # kernel do); the materialising baseline spends 2 r n^2 on the full product.
    return Case("gram_update", f"bf16 {r}x{c}", fns, "torch_materialise",
                flop=r * c * (c + 1),
                compute_share=0.5 if acc == torch.float64 else 1.0)  # fmt: skip


def _randomized_svd_case(device: str, shape: tuple[int, int]) -> Case:
    # The randomized path against the same method on a materialised difference (equal
    # oversampling and depth: power_iters=2 is three Krylov blocks, the 2 q + 2 = 6 passes
    # of svd_lowrank's niter=2); the exact Gram path is another trade-off.
    m, n = shape
    w0, w1, _ = _weights(shape, device, 1)
    k = SVD_K
    fixed = {"seed": 0, "exact_threshold": 0, "power_iters": 2}
    U, S, Vh = paramgeom.linalg.randomized_svd(w0, w1, k, **fixed)
    s_true = torch.linalg.svdvals(w1.double() - w0.double())[:k]
    _check(float(((S - s_true).abs() / s_true).max()) < 1e-2, "randomized_svd top values")
    fns = {
        "randomized_svd": lambda: paramgeom.linalg.randomized_svd(w0, w1, k, **fixed),
        "torch_materialise_svd_lowrank": lambda: torch.svd_lowrank(
            w1.float() - w0.float(), q=k + 10, niter=2
        ),
    }
    return Case("randomized_svd", f"bf16 {m}x{n} k={k}", fns, "torch_materialise_svd_lowrank")


def _sketch_case(device: str, shape: tuple[int, int]) -> Case:
    """One checkpoint's sketch update vs materialising dW and multiplying by the same test
    matrices (the only other way to get the same sketches)."""
    m, n = shape
    w0, w1, _ = _weights(shape, device, 2)
    sk = paramgeom.linalg.Sketch((m, n), rank=8, seed=0, device=device)
    right = sk._right.float()
    psi_t = sk._psi_t.float()

    def materialise():
        d = w1.float() - w0.float()
        return d @ right, d.T @ psi_t

    sk.update(w0, w1)
    want_y, want_xt = materialise()
    k = sk.range_size
    err = torch.linalg.norm(sk.Y - want_y[:, :k].double())
    _check(err <= 1e-4 * torch.linalg.norm(want_y[:, :k].double()), "Sketch.update Y")
    fns = {"sketch_update": lambda: sk.update(w0, w1), "torch_materialise": materialise}
    return Case("sketch_update", f"bf16 {m}x{n} rank=8", fns, "torch_materialise",
                nbytes=2 * w0.nbytes,
                flop=2 * m * n * (right.shape[1] + psi_t.shape[1]))  # fmt: skip


def usable_backends(device: str = "cpu") -> list[str]:
    """The kernel backends ``bench`` times on ``device``: every usable one but the plain-torch
    reference backend, which only stands in when nothing else is usable."""
    infos = paramgeom.backends()
    backends = [n for n, i in infos.items() if i.available and device in i.devices]
    return [b for b in backends if b != "torch"] or backends


def case_builders(
    device: str = "cpu", profile: str = "quick", backends: list[str] | None = None
) -> dict[str, Callable[[], Case]]:
    """Every case of a profile (``smoke``, ``quick``, ``full``), by a stable id, unbuilt:
    building one allocates its tensors and checks every provider's answer (raising
    :class:`WrongAnswerError`), so callers build them one at a time. ``paramgeom bench``
    and the pytest-benchmark suite ``benchmarks/bench_cases.py`` both time these."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    sizes, shape = PROFILES[profile]
    be = usable_backends(device) if backends is None else backends
    out: dict[str, Callable[[], Case]] = {}
    for dname in ("bf16", "fp32"):
        for n in sizes:
            out[f"diff_stats-{dname}-{n:.0e}"] = lambda dname=dname, n=n: _diff_stats_case(
                device, be, dname, n
            )
    tag = f"{shape[0]}x{shape[1]}"
    out[f"diff_matmul-{tag}"] = lambda: _diff_matmul_case(device, be, shape)
    out[f"gram_update-{tag}"] = lambda: _gram_update_case(device, be, shape)
    out[f"randomized_svd-{tag}"] = lambda: _randomized_svd_case(device, shape)
    out[f"sketch_update-{tag}"] = lambda: _sketch_case(device, shape)
    return out


def markdown(rows: list[Row], limits: dict, info: dict) -> str:
    lines = [
        f"# paramgeom bench ({info['date']}, {info['gpu'] or info['platform']})",
        "",
        f"Limits measured in this run: copy {limits['copy_gbps']:.1f} GB/s (read + write), "
        f"GEMM {limits['gemm_tflops']:.2f} TFLOP/s (one large torch.matmul)"
        + (
            f", FMA {limits['fma_tflops']:.2f} TFLOP/s (fp32 FMA loop on every thread)"
            if limits.get("fma_tflops")
            else ""
        )
        + ". % of limit: of the larger compute limit for products (half of it for the CPU's "
        "float64 gram_update), of copy bandwidth for the rest. Speed-up: the case's "
        "plain-torch baseline time over this provider's (torch_rel_idiom for diff_stats, "
        "torch_materialise* for the rest).",
        "",
        "| op | case | provider | p50 ms (p20-p80) | GB/s | TFLOP/s | % of limit | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sp = f"{r.speedup_vs_torch:.2f}x" if r.speedup_vs_torch else ""
        lines.append(
            f"| {r.op} | {r.case} | {r.provider} | {r.p50_ms:.2f} ({r.p20_ms:.2f}-{r.p80_ms:.2f})"
            f" | {r.gbps:.1f} | {r.tflops:.3f} | {r.pct_of_limit:.0f}% | {sp} |"
        )
    return "\n".join(lines) + "\n"


def run(
    out: Path, quick: bool = False, device: str = "cpu", progress=None, smoke: bool = False
) -> dict:
    """Run the benchmark and write ``bench.json`` and ``bench.md`` into ``out``.

    ``quick`` uses sizes that finish in about a minute on a 2-core CPU; ``smoke`` tiny sizes
    that only prove the whole pipeline works (seconds; the tests use it). ``progress``: an
    optional callable ``progress(description)`` called before each case. Raises
    :class:`WrongAnswerError` when a provider returns a wrong answer (nothing is written).
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU here")
    profile = "smoke" if smoke else "quick" if quick else "full"
    reps = 2 if smoke else 5 if quick else 11
    say = progress or (lambda _msg: None)
    say("measuring copy bandwidth and GEMM peak")
    limits = _limits(device, quick or smoke)
    rows: list[Row] = []
    for cid, build in case_builders(device, profile).items():
        say(cid)
        case = build()
        rows += _rows(case, time_interleaved(case.providers, reps, device), limits)
        del case  # its tensors (up to a few GB in the full profile) before the next case
    info = machine()
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": info, "limits": limits, "rows": [asdict(r) for r in rows]}
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    (out / "bench.md").write_text(markdown(rows, limits, info))
    return result
