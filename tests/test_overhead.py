"""What made small runs fast stays correct: lazy imports, the Parquet columns built from
buffers, the one-pass group figures, the per-file identity cache and the NumPy hand-over
of the cpu backend (benchmarks/RESULTS.md, "overhead outside the kernels")."""

from __future__ import annotations

import math
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import paramgeom
from paramgeom.engine.journal import FileIdentities
from paramgeom.engine.schema import DIFF_COLUMNS
from paramgeom.report import aggregate, tables


def _modules_after(code: str) -> set[str]:
    """Top-level modules imported by ``code`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return {m.split(".")[0] for m in out.stdout.split()}


def test_import_paramgeom_and_the_cli_do_not_import_torch():
    mods = _modules_after("import paramgeom, paramgeom.cli")
    for heavy in ("torch", "rich", "matplotlib", "pyarrow", "pandas", "scipy", "transformers"):
        assert heavy not in mods, heavy


def test_every_parser_and_help_is_built_without_torch():
    # what `paramgeom --help` and `paramgeom diff --help` do before printing
    mods = _modules_after(
        "import paramgeom.cli as c\np = c.build_parser()\n"
        "p.parse_args(['diff', 'a', 'b', 'c', '--out', 'o', '--chunk-bytes', '2MiB'])"
    )
    for heavy in ("torch", "numpy", "rich", "matplotlib", "scipy"):
        assert heavy not in mods, heavy


def test_the_report_plots_import_neither_matplotlib_nor_numpy(tmp_path):
    # a diff's plots are SVG written by report/svg.py: importing matplotlib alone took 0.7 s
    mods = _modules_after(
        "from paramgeom.report.plots import plot_diff, plot_trajectory\n"
        "rows = [dict(module='q', layer=0, numel=4, unchanged_fraction=0.5,\n"
        "             relative_change=1e-3, stable_rank=2.0, angle_left_max=1.0)]\n"
        f"assert len(plot_diff(rows, {str(tmp_path / 'd')!r})) == 5\n"
        "s = {'steps': [{'step': 1, 'sim_k_mean': 0.5, 'frobenius_delta': 1.0}],\n"
        "     'steps_by_module': {}}\n"
        f"assert len(plot_trajectory([], s, {str(tmp_path / 't')!r})) == 2"
    )
    for heavy in ("matplotlib", "numpy", "torch", "PIL"):
        assert heavy not in mods, heavy


def test_checkpoint_names_resolve_on_first_use():
    import paramgeom.checkpoints as ck
    from paramgeom.checkpoints.reader import open_checkpoint
    from paramgeom.checkpoints.synth import DTYPES, parse_size

    assert ck.open_checkpoint is open_checkpoint and set(ck.__all__) <= set(dir(ck))
    assert list(DTYPES) == ["bf16", "fp16", "fp32", "fp8"] and parse_size("2MiB") == 2**21
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ck.nope  # noqa: B018


def test_public_names_still_resolve():
    assert paramgeom.diff_stats is paramgeom.api.diff_stats.diff_stats
    from paramgeom import DiffStats, GeometryMonitor, backends, linalg, metrics

    assert DiffStats.__name__ == "DiffStats" and GeometryMonitor.__name__ == "GeometryMonitor"
    assert callable(backends) and linalg.__name__ == "paramgeom.linalg"
    assert metrics.__name__ == "paramgeom.metrics"
    assert set(paramgeom.__all__) <= set(dir(paramgeom))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        paramgeom.nope  # noqa: B018


def test_a_quiet_progress_bar_imports_no_rich():
    mods = _modules_after(
        "from paramgeom.engine.progress import ByteProgress\n"
        "with ByteProgress('diff', 10, quiet=True) as bar:\n"
        "    bar.describe('x'); bar.advance(5)"
    )
    assert "rich" not in mods


def _random_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    floats = [0.0, -0.0, 1.5, 1e-300, 5e-324, math.nan, math.inf, -math.inf, None]
    rows = []
    for i in range(n):
        row = {}
        for col, (kind, _) in DIFF_COLUMNS.items():
            if rng.random() < 0.3:
                row[col] = None
            elif kind == "string":
                row[col] = rng.choice(["", 'q"uote', "é,\n", "layers.1.q"]) + str(i)
            elif kind == "int64":
                row[col] = rng.choice([0, -1, 7, 2**63 - 1, -(2**63)])
            else:
                row[col] = rng.choice(floats) if rng.random() < 0.5 else rng.uniform(-2, 2)
        row["name"] = f"t{i:05d}"
        rows.append(row)
    return rows


@pytest.mark.parametrize("n", [0, 1, 9, 300])
def test_parquet_columns_from_buffers_give_the_bytes_of_pa_array(tmp_path, monkeypatch, n):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    rows = tables.sort_rows(_random_rows(n, seed=n), DIFF_COLUMNS)
    got = tables._write_parquet(rows, DIFF_COLUMNS, tmp_path / "a.parquet")
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    # the former construction (pa.Table.from_pylist: pa.array per column), all else the same
    monkeypatch.setattr(tables, "_arrow_column", lambda v, kind: pa.array(v, type=types[kind]))
    want = tables._write_parquet(rows, DIFF_COLUMNS, tmp_path / "b.parquet")
    assert got.read_bytes() == want.read_bytes()
    back = pq.read_table(got).to_pylist()
    assert [tables._cell(r["frobenius_delta"], "float64") for r in back] == [
        tables._cell(r["frobenius_delta"], "float64") for r in rows
    ]


def test_writing_a_table_imports_no_pandas(tmp_path):
    mods = _modules_after(
        "from pathlib import Path\n"
        "from paramgeom.report.tables import write_table\n"
        "from paramgeom.engine.schema import DIFF_COLUMNS\n"
        f"write_table([{{'name': 'a', 'numel': 3, 'relative_change': 0.5}}], DIFF_COLUMNS, "
        f"Path({str(tmp_path)!r}), 't')"
    )
    assert "pyarrow" in mods and "pandas" not in mods


def test_csv_of_odd_rows_reads_back(tmp_path):
    rows = _random_rows(200, seed=3)
    tables.write_table(rows, DIFF_COLUMNS, tmp_path, "t")
    back = tables.read_csv(tmp_path / "t.csv", DIFF_COLUMNS)
    want = tables.sort_rows(rows, DIFF_COLUMNS)
    assert [[tables._cell(r[c], k) for c, (k, _) in DIFF_COLUMNS.items()] for r in back] == [
        [tables._cell(r[c], k) for c, (k, _) in DIFF_COLUMNS.items()] for r in want
    ]


# -- the group figures, one pass against the column-by-column definitions -----------------


def _num(v):
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _vals(rows, col):
    return [v for v in (_num(r.get(col)) for r in rows) if v is not None]


def _weighted(rows, col):
    num, den = [], []
    for r in rows:
        v, w = _num(r.get(col)), _num(r.get("numel"))
        if v is not None and w is not None:
            num.append(w * v)
            den.append(w)
    return math.fsum(num) / math.fsum(den) if den and math.fsum(den) > 0 else None


def _oracle(rows):
    def rss(v):
        return math.sqrt(math.fsum(x * x for x in v)) if v else None

    pairs = [(_num(r.get("frobenius_delta")), _num(r.get("frobenius_base"))) for r in rows]
    pairs = [(d, b) for d, b in pairs if d is not None and b is not None]
    base = math.fsum(b * b for _, b in pairs)
    out = {
        "n_tensors": len(rows),
        "numel": sum(int(r["numel"]) for r in rows if r.get("numel") is not None),
        "n_matrices": sum(1 for r in rows if r.get("stable_rank") is not None),
        "n_nonfinite": sum(int(r["n_nonfinite"]) for r in rows if r.get("n_nonfinite") is not None),
        "frobenius_delta": rss(_vals(rows, "frobenius_delta")),
        "frobenius_base": rss(_vals(rows, "frobenius_base")),
        "relative_change": math.sqrt(math.fsum(d * d for d, _ in pairs)) / math.sqrt(base)
        if pairs and base > 0
        else None,
        "max_abs_delta": max(_vals(rows, "max_abs_delta"), default=None),
    }
    for col in ("unchanged_fraction", "unchanged_fraction_atol", "equal_fraction"):
        out[col] = _weighted(rows, col)
    for col in ("angle_left_mean", "angle_right_mean"):
        out[col] = _weighted(rows, col)
    for col in ("stable_rank", "effective_rank", "spectral_drift"):
        v = _vals(rows, col)
        out[f"{col}_mean"] = math.fsum(v) / len(v) if v else None
        out[f"{col}_median"] = float(statistics.median(v)) if v else None
    for col in ("angle_left_max", "angle_right_max"):
        v = _vals(rows, col)
        out[f"{col}_mean"] = math.fsum(v) / len(v) if v else None
        out[f"{col}_max"] = max(v) if v else None
    return out


@pytest.mark.parametrize("seed", range(6))
def test_group_figures_equal_the_column_definitions(seed):
    rows = _random_rows(random.Random(seed).randint(0, 60), seed)
    for r in rows:
        r["numel"] = None if r["numel"] is None else abs(r["numel"]) % 1000
    got = aggregate.group_figures(rows)
    want = _oracle(rows)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert tables._jsonable(got[k]) == tables._jsonable(v), k  # NaN-free, bit for bit


def test_summary_groups_split_the_rows():
    rows = _random_rows(120, seed=11)
    for i, r in enumerate(rows):
        r.update(numel=i + 1, layer=i % 7 if i % 5 else None, module=("q", "k", None)[i % 3])
        r.update(stack=None if i % 4 else "s", expert=i % 3)
    s = aggregate.summarize_diff(rows)
    assert s["model"] == _oracle(rows) | {
        k: s["model"][k] for k in s["model"] if k not in _oracle(rows)
    }
    for key, figs in s["by_layer"].items():
        part = [r for r in rows if str(r["layer"] if r["layer"] is not None else "none") == key]
        assert figs == aggregate.group_figures(part)
    assert s["by_stack"]["s"]["n_experts"] == 3
    assert list(s["by_module"]) == ["q", "k", "none"]


def test_file_identities_once_per_file_as_str_or_path(tmp_path):
    calls = []

    class Ckpt:
        def identity(self, file):
            calls.append(file)
            assert isinstance(file, Path)

            class Ident:
                def key(self):
                    return f"id:{file.name}"

            return Ident()

    ids, ckpt = FileIdentities(), Ckpt()
    keys = [ids.key(ckpt, f) for f in ("a.st", "a.st", Path("a.st"), "b.st", "b.st")]
    assert keys == ["id:a.st", "id:a.st", "id:a.st", "id:b.st", "id:b.st"]
    assert len(calls) == 3  # "a.st", Path("a.st"), "b.st"


@pytest.mark.parametrize(
    "make",
    [
        lambda: (torch.nn.Parameter(torch.randn(3, 4)), None),
        lambda: (torch.randn(1, 5).expand(4, 5), None),
        lambda: (torch.randn(6, 8)[:, 1:7], None),
        lambda: (torch.zeros(0, 5), None),
        lambda: (torch.randn(2, 3, 4).bfloat16(), None),
    ],
)
def test_cpu_backend_hand_over_matches_torch(make):
    w0, _ = make()
    w1 = (w0.detach() + 1e-3 * torch.randn(w0.shape).to(w0.dtype)).to(w0.dtype)
    a = paramgeom.diff_stats(w0, w1, (1e-3,), (1e-5,), per_row=True, backend="cpu")
    b = paramgeom.diff_stats(w0, w1, (1e-3,), (1e-5,), per_row=True, backend="torch")
    assert (a.numel, a.n_equal, a.n_within_rel, a.n_within_abs) == (
        b.numel, b.n_equal, b.n_within_rel, b.n_within_abs,
    )  # fmt: skip
    assert a.max_abs_delta == b.max_abs_delta
    assert torch.equal(a.row_changed, b.row_changed)
    assert a.sum_sq_delta == pytest.approx(b.sum_sq_delta, rel=1e-12, abs=1e-300)


def test_journal_collect_gives_appended_entries_as_the_file_holds_them(tmp_path):
    import numpy as np

    from paramgeom.engine.journal import Journal

    j = Journal(tmp_path, "diff")
    j.start()
    rows = [{"name": "a", "x": math.nan, "y": -0.0, "z": 2**70, "s": 'é"\n', "n": None}]
    j.append("k1", "u1", rows, ["a note"])
    j.append("k2", "u2", [{"name": "b", "v": np.float64(1.5)}], [])  # not plain: read back
    rows[0]["name"] = "changed later"
    j.close()
    keyed = [("k2", "u2"), ("k1", "u1")]
    got = j.collect(keyed)
    fresh = Journal(tmp_path, "diff").collect(keyed)
    assert repr(got) == repr(fresh)  # repr: NaN != NaN
    assert got[0][1]["name"] == "a" and type(got[0][0]["v"]) is float
    assert list(j._appended) == ["k1"]
    with pytest.raises(Exception, match="unit missing from the journal"):
        j.collect([("k3", "u3")])


def test_json_text_is_json_dumps_character_for_character(tmp_path):
    import json

    rng = random.Random(5)
    leaves = [None, True, False, 0, -5, 2**70, 1.5, -0.0, 5e-324, 1e300, math.nan, "", "a"]
    leaves += ['é\\"\n\x00\u2028', Path("/x/y")]

    def make(depth):
        r = rng.random()
        if depth > 3 or r < 0.4:
            return rng.choice(leaves)
        if r < 0.7:
            keys = ["b", "a", "é", "", "10", "9", 3]
            return {rng.choice(keys): make(depth + 1) for _ in range(rng.randint(0, 4))}
        return [make(depth + 1) for _ in range(rng.randint(0, 4))]

    for i in range(2000):
        obj = {"x": make(0), "tuple": (1, 2.5)}
        chunks: list[str] = []
        tables._dump(tables._jsonable(obj), 0, chunks)
        want = json.dumps(tables._jsonable(obj), sort_keys=True, indent=2, allow_nan=False)
        assert "".join(chunks) == want, i
    tables.write_json(obj, tmp_path / "s.json")
    assert (tmp_path / "s.json").read_text() == want + "\n"


def test_markdown_escape_is_the_per_character_rule():
    from paramgeom.report import render

    rng = random.Random(2)
    alphabet = sorted(render._MD_SPECIAL) + list("ab \n\r\u2028é")
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        flat = " ".join(text.splitlines())
        want = "".join("\\" + c if c in render._MD_SPECIAL else c for c in flat)
        assert render._md(text) == want


def test_checked_tolerances_echo_each_zero_as_given():
    a = torch.zeros(4, dtype=torch.bfloat16)
    for first, second in (((0.0,), (-0.0,)), ((-0.0,), (0.0,))):
        paramgeom.diff_stats(a, a, rel_tols=first)  # cached first
        got = paramgeom.diff_stats(a, a, rel_tols=second).rel_tols
        assert got == second and math.copysign(1.0, got[0]) == math.copysign(1.0, second[0])
