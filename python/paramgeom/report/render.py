"""Markdown and self-contained HTML reports of a diff and of a trajectory (DESIGN "Outputs").

Both reports are built once as a list of blocks (headings, paragraphs, tables, lists, images)
and rendered to ``report.md`` and ``report.html``. Every piece of text, tensor names and input
paths included, is escaped for its format (Markdown: backslash escapes of the characters that
carry markup, ``&``, ``<`` and ``>`` included; HTML: :func:`html.escape`). Images are referenced
by their file name relative to the report's folder (percent-encoded), never embedded from
elsewhere; the HTML has its style inline and loads nothing. Files are written atomically.

The summaries are the engine's; every key but the figures themselves is optional, and a
missing figure prints as ``n/a``.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from paramgeom.report.aggregate import lock_rule, module_sort_key
from paramgeom.report.tables import atomic_write

__all__ = ["PAPER", "write_diff_report", "write_trajectory_report"]

#: The paper's figures (arXiv 2606.07082; Qwen3-8B student, Qwen3-32B teacher), DESIGN "Metrics".
PAPER = {
    "setting": "Qwen3-8B student, Qwen3-32B teacher (arXiv 2606.07082)",
    "unchanged": {"OPD": "51.6%", "SFT": "8.1%", "RLVR": "77.2%"},
    "rotation": {"OPD": "~1°", "SFT": "> 10°", "RLVR": "< 0.5°"},
    "spectral_drift": {"OPD": "~1e-4", "SFT": "~1e-3", "RLVR": "~1e-5"},
    "locked_dimension": {"OPD": "< 16", "SFT": "—", "RLVR": "—"},
    "lock_time": {"OPD": "within the first ~10% of training"},
}

CAVEAT_UPDATE_SIZE = (
    "Caveat: the bf16 unchanged fraction falls with the size of the update "
    "(||dW||_F / ||W0||_F) whatever the training method, so it says as much about how far a run "
    "went as about the method. Compare methods at a matched relative update size (or an equal "
    "accuracy gain) and the same learning rate, with several seeds and their spread, before "
    "reading a difference against the paper's figures as a difference of method "
    "(DESIGN, 'Comparing methods')."
)

CAVEAT_DIMENSION = (
    "Thresholds in 'dimensions' (K, stable rank < K) only mean something when the matrices are "
    "much wider than K: state K relative to the matrix width before comparing with the paper's "
    "K = 16 (DESIGN, 'Comparing methods')."
)

_MAX_LIST = 200


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _pct(x: Any, digits: int = 2) -> str:
    v = _finite(x)
    return "n/a" if v is None else f"{100.0 * v:.{digits}f}%"


def _deg(x: Any) -> str:
    v = _finite(x)
    return "n/a" if v is None else f"{v:.3g}°"


def _sci(x: Any) -> str:
    v = _finite(x)
    return "n/a" if v is None else f"{v:.2e}"


def _num(x: Any) -> str:
    v = _finite(x)
    return "n/a" if v is None else f"{v:.4g}"


def _int(x: Any) -> str:
    if x is None or isinstance(x, bool):
        return "n/a"
    try:
        return f"{int(x):,}"
    except (TypeError, ValueError):
        return str(x)


def _value(x: Any) -> str:
    """A rule's value in words: floats with :g, lists joined, the rest as str."""
    if isinstance(x, float):
        return f"{x:g}"
    if isinstance(x, (list, tuple)):
        return ", ".join(_value(v) for v in x)
    return str(x)


# --------------------------------------------------------------------------------------------
# the document model
# --------------------------------------------------------------------------------------------


@dataclass
class _H:
    level: int
    text: str


@dataclass
class _P:
    text: str


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class _List:
    items: list[str]


@dataclass
class _Img:
    src: str
    caption: str


_MD_SPECIAL = set("\\`*_{}[]<>|&~#")
_MD_ESCAPE = re.compile("([" + re.escape("".join(sorted(_MD_SPECIAL))) + "])")


def _md(text: str) -> str:
    """Text safe in Markdown (and in a Markdown table cell): markup characters escaped."""
    text = " ".join(str(text).splitlines())
    return _MD_ESCAPE.sub(r"\\\1", text)


def _to_markdown(title: str, blocks: Sequence[Any]) -> str:
    out = [f"# {_md(title)}", ""]
    for b in blocks:
        if isinstance(b, _H):
            out += ["#" * (b.level + 1) + " " + _md(b.text), ""]
        elif isinstance(b, _P):
            out += [_md(b.text), ""]
        elif isinstance(b, _List):
            out += [f"- {_md(item)}" for item in b.items] + [""]
        elif isinstance(b, _Table):
            out.append("| " + " | ".join(_md(h) for h in b.headers) + " |")
            out.append("|" + "|".join("---" for _ in b.headers) + "|")
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, _Img):
            out += [f"![{_md(b.caption)}]({quote(b.src)})", ""]
    return "\n".join(out).rstrip("\n") + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 70em; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td { font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0; }
figure { margin: 1em 0; }
figcaption { font-size: 0.9em; color: #555; }
p.caveat { background: #fff7e0; border-left: 4px solid #e0a800; padding: 0.5em 0.8em; }
""".strip()


def _to_html(title: str, blocks: Sequence[Any]) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{e(title)}</h1>",
    ]
    for b in blocks:
        if isinstance(b, _H):
            lv = min(b.level + 1, 6)
            out.append(f"<h{lv}>{e(b.text)}</h{lv}>")
        elif isinstance(b, _P):
            cls = ' class="caveat"' if b.text.startswith("Caveat") else ""
            out.append(f"<p{cls}>{e(b.text)}</p>")
        elif isinstance(b, _List):
            out.append("<ul>")
            out += [f"<li>{e(item)}</li>" for item in b.items]
            out.append("</ul>")
        elif isinstance(b, _Table):
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in b.headers) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows]
            out.append("</table>")
        elif isinstance(b, _Img):
            out.append(
                f'<figure><img src="{e(quote(b.src))}" alt="{e(b.caption)}">'
                f"<figcaption>{e(b.caption)}</figcaption></figure>"
            )
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _write(title: str, blocks: Sequence[Any], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    md, page = out_dir / "report.md", out_dir / "report.html"
    with atomic_write(md, "w") as fh:
        fh.write(_to_markdown(title, blocks))
    with atomic_write(page, "w") as fh:
        fh.write(_to_html(title, blocks))
    return [md, page]


# --------------------------------------------------------------------------------------------
# shared sections
# --------------------------------------------------------------------------------------------


def _rel_src(plot: Path | str, out_dir: Path) -> str:
    """The plot's path relative to the report folder (its bare name when outside it)."""
    p = Path(plot)
    try:
        rel = Path(os.path.relpath(p.resolve(), Path(out_dir).resolve()))
    except ValueError:  # another drive (Windows)
        return p.name
    return p.name if rel.parts and rel.parts[0] == ".." else rel.as_posix()


_CAPTIONS = {
    "heatmap_unchanged.svg": "Unchanged fraction (bf16 rule) by layer and module",
    "heatmap_angle.svg": "Max principal angle (mean of left and right) by layer and module",
    "stable_rank_hist.svg": "Stable rank of dW per matrix",
    "angle_hist.svg": "Max principal angles per matrix",
    "unchanged_vs_update.svg": "Unchanged fraction against relative update size, per tensor",
    "sim_k.svg": "Sim_K(t, t_end) with the lock threshold and lock step",
    "stable_rank.svg": "Mean stable rank of dW_t with the K line",
    "update_norm.svg": "||dW_t||_F over steps",
    "hill_alpha.svg": "Hill tail index of dW_t over steps",
}


def _plots(plots: Sequence[Path | str], out_dir: Path) -> list[Any]:
    if not plots:
        return []
    blocks: list[Any] = [_H(1, "Plots")]
    for p in plots:
        name = Path(p).name
        blocks.append(_Img(_rel_src(p, out_dir), _CAPTIONS.get(name, name)))
    return blocks


def _capped(names: Sequence[Any]) -> list[str]:
    items = [str(n) for n in names[:_MAX_LIST]]
    if len(names) > _MAX_LIST:
        items.append(f"... and {len(names) - _MAX_LIST} more (see the JSON summary)")
    return items


def _name_list(title: str, names: Sequence[Any] | None, empty: str) -> list[Any]:
    names = list(names or [])
    blocks: list[Any] = [_H(2, f"{title} ({len(names)})")]
    blocks.append(_List(_capped(names)) if names else _P(empty))
    return blocks


def _describe_input(label: str, spec: Any) -> list[str]:
    if isinstance(spec, Mapping):
        path = spec.get("path", "")
        files = list(spec.get("files") or [])
        step = spec.get("step")
        head = f"{label}: {path}" + (f" (step {step})" if step is not None else "")
        if files:
            shown = ", ".join(str(f) for f in files[:12])
            more = f", ... ({len(files)} files)" if len(files) > 12 else ""
            head += f" — {len(files)} file(s): {shown}{more}"
        return [head]
    if isinstance(spec, (list, tuple)):
        lines: list[str] = []
        for i, item in enumerate(spec):
            lines += _describe_input(f"{label}[{i}]", item)
        return lines
    return [f"{label}: {spec}"]


def _inputs(inputs: Mapping[str, Any] | None) -> list[Any]:
    if not inputs:
        return []
    lines: list[str] = []
    for key in inputs:
        lines += _describe_input(str(key), inputs[key])
    return [_H(1, "Inputs"), _List(lines)]


def _rules(rules: Mapping[str, Any] | None, extra: Sequence[str] = ()) -> list[Any]:
    items = list(extra) + [f"{k}: {_value(v)}" for k, v in (rules or {}).items()]
    if not items:
        return []
    return [_H(1, "Rules used"), _List(items)]


def _notes(notes: Sequence[str] | None) -> list[Any]:
    return [_H(1, "Notes"), _List([str(n) for n in notes])] if notes else []


# --------------------------------------------------------------------------------------------
# diff report
# --------------------------------------------------------------------------------------------

_GROUP_HEADERS = [
    "tensors",
    "parameters",
    "unchanged (bf16 rule)",
    "unchanged (atol)",
    "||dW||/||W0||",
    "stable rank (mean)",
    "max angle L (mean)",
    "max angle R (mean)",
    "spectral drift (mean)",
]


def _group_cells(f: Mapping[str, Any]) -> list[str]:
    return [
        _int(f.get("n_tensors")),
        _int(f.get("numel")),
        _pct(f.get("unchanged_fraction")),
        _pct(f.get("unchanged_fraction_atol")),
        _sci(f.get("relative_change")),
        _num(f.get("stable_rank_mean")),
        _deg(f.get("angle_left_max_mean")),
        _deg(f.get("angle_right_max_mean")),
        _sci(f.get("spectral_drift_mean")),
    ]


def _layer_key(key: str) -> tuple[int, int, str]:
    try:
        return (0, int(key), "")
    except ValueError:
        return (1, 0, key)


def _pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def _diff_headline(model: Mapping[str, Any], rules: Mapping[str, Any]) -> list[Any]:
    eta = rules.get("eta", 1e-3)
    k = rules.get("rank_k")
    sr_med, sr_mean = model.get("stable_rank_median"), model.get("stable_rank_mean")
    rows = [
        [
            f"Unchanged parameters (bf16, |w1-w0| <= {_value(eta)} max(|w0|,|w1|), "
            "parameter-weighted)",
            PAPER["unchanged"]["OPD"],
            PAPER["unchanged"]["SFT"],
            PAPER["unchanged"]["RLVR"],
            _pct(model.get("unchanged_fraction")),
        ],
        [
            "Subspace rotation (max principal angle of the top-K subspaces, mean over "
            "matrices; left / right)" + (f", K = {k}" if k is not None else ""),
            PAPER["rotation"]["OPD"],
            PAPER["rotation"]["SFT"],
            PAPER["rotation"]["RLVR"],
            _pair(_deg(model.get("angle_left_max_mean")), _deg(model.get("angle_right_max_mean"))),
        ],
        [
            "Spectral drift ||s(W1)-s(W0)|| / ||s(W0)|| (mean over matrices)",
            PAPER["spectral_drift"]["OPD"],
            PAPER["spectral_drift"]["SFT"],
            PAPER["spectral_drift"]["RLVR"],
            _sci(model.get("spectral_drift_mean")),
        ],
        [
            "Update dimension: stable rank of dW (median / mean over matrices)",
            PAPER["locked_dimension"]["OPD"] + " (locked)",
            PAPER["locked_dimension"]["SFT"],
            PAPER["locked_dimension"]["RLVR"],
            _pair(_num(sr_med), _num(sr_mean)),
        ],
        [
            "Relative update ||dW||_F / ||W0||_F (whole model)",
            "—",
            "—",
            "—",
            _sci(model.get("relative_change")),
        ],
    ]
    return [
        _H(1, "Ours vs paper"),
        _P(f"Paper: {PAPER['setting']}. This run: the checkpoints listed under Inputs."),
        _Table(["Diagnostic", "Paper OPD", "Paper SFT", "Paper RLVR", "This run"], rows),
        _P(CAVEAT_UPDATE_SIZE),
    ]


def _model_table(model: Mapping[str, Any]) -> list[Any]:
    rows = [
        ["tensors", _int(model.get("n_tensors"))],
        ["parameters", _int(model.get("numel"))],
        ["2-D matrices (with spectra)", _int(model.get("n_matrices"))],
        ["non-finite values (excluded)", _int(model.get("n_nonfinite"))],
        ["unchanged fraction (bf16 rule)", _pct(model.get("unchanged_fraction"))],
        ["unchanged fraction (atol, older tools)", _pct(model.get("unchanged_fraction_atol"))],
        ["equal fraction", _pct(model.get("equal_fraction"))],
        ["||dW||_F", _num(model.get("frobenius_delta"))],
        ["||dW||_F / ||W0||_F", _sci(model.get("relative_change"))],
        ["max |w1 - w0|", _num(model.get("max_abs_delta"))],
        ["stable rank of dW: median / mean", _pair(
            _num(model.get("stable_rank_median")), _num(model.get("stable_rank_mean"))
        )],
        ["effective rank of dW: median / mean", _pair(
            _num(model.get("effective_rank_median")), _num(model.get("effective_rank_mean"))
        )],
        ["spectral drift: mean / median", _pair(
            _sci(model.get("spectral_drift_mean")), _sci(model.get("spectral_drift_median"))
        )],
        ["max angle, left: mean / max over matrices", _pair(
            _deg(model.get("angle_left_max_mean")), _deg(model.get("angle_left_max_max"))
        )],
        ["max angle, right: mean / max over matrices", _pair(
            _deg(model.get("angle_right_max_mean")), _deg(model.get("angle_right_max_max"))
        )],
        ["mean angle, left / right (parameter-weighted)", _pair(
            _deg(model.get("angle_left_mean")), _deg(model.get("angle_right_mean"))
        )],
    ]  # fmt: skip
    return [_H(1, "Whole model"), _Table(["figure", "value"], rows)]


def write_diff_report(summary: dict, out_dir: Path, plots: list[Path]) -> list[Path]:
    """Write ``report.md`` and ``report.html`` for a ``paramgeom diff`` run (DESIGN "Outputs").

    ``summary`` holds :func:`~paramgeom.report.aggregate.summarize_diff`'s ``model``,
    ``by_module``, ``by_layer``, ``by_stack`` and, all optional, ``rules`` (name -> value, e.g.
    eta, atol, dtype rule, prefix rule, tied embeddings, fp8 rule, rank_k, angle method),
    ``inputs`` (``{"base": {"path", "files"}, "tuned": {...}}``), ``missing_in_tuned``,
    ``missing_in_base``, ``tied`` and ``notes``. Sections: the paper's figures beside this
    run's (unchanged OPD 51.6% / SFT 8.1% / RLVR 77.2%, rotation ~1° / > 10° / < 0.5°,
    spectral drift ~1e-4 / ~1e-3 / ~1e-5, locked dimension < 16 for OPD), the rules, whole
    model, per module, per layer, expert stacks, missing and tied tensors, the plots, the
    caveat that the unchanged fraction falls with update size (DESIGN "Comparing methods"),
    and notes. ``plots`` are referenced by path relative to ``out_dir``. Returns both paths.
    """
    out_dir = Path(out_dir)
    summary = summary or {}
    model = summary.get("model") or {}
    rules = summary.get("rules") or {}
    eta = rules.get("eta", 1e-3)
    blocks: list[Any] = _diff_headline(model, rules)
    blocks += _rules(
        rules,
        [
            f"Unchanged: both checkpoints as bf16, |w1 - w0| <= eta * max(|w0|, |w1|) with "
            f"eta = {_value(eta)}, weighted by parameter count over tensors (DESIGN "
            "'Unchanged fraction'); NaN/Inf values are counted and excluded from figures.",
        ],
    )
    blocks += _inputs(summary.get("inputs"))
    blocks += _model_table(model)

    by_module = summary.get("by_module") or {}
    if by_module:
        rows = [
            [str(m)] + _group_cells(by_module[m]) for m in sorted(by_module, key=module_sort_key)
        ]
        blocks += [_H(1, "By module type"), _Table(["module"] + _GROUP_HEADERS, rows)]
    by_layer = summary.get("by_layer") or {}
    if by_layer:
        rows = [[str(k)] + _group_cells(by_layer[k]) for k in sorted(by_layer, key=_layer_key)]
        blocks += [_H(1, "By layer"), _Table(["layer"] + _GROUP_HEADERS, rows)]
    by_stack = summary.get("by_stack") or {}
    blocks.append(_H(1, "Expert stacks"))
    if by_stack:
        rows = [
            [str(s), _int(by_stack[s].get("n_experts"))] + _group_cells(by_stack[s])
            for s in sorted(by_stack)
        ]
        blocks.append(_Table(["stack", "experts"] + _GROUP_HEADERS, rows))
    else:
        blocks.append(_P("No mixture-of-experts stacks in this model."))

    blocks.append(_H(1, "Missing, extra and tied tensors"))
    blocks += _name_list(
        "In the base, missing in the tuned checkpoint",
        summary.get("missing_in_tuned"),
        "None.",
    )
    blocks += _name_list(
        "In the tuned, missing in the base checkpoint",
        summary.get("missing_in_base"),
        "None.",
    )
    blocks += _name_list("Tied tensors (reported once)", summary.get("tied"), "None.")
    blocks += _plots(plots, out_dir)
    blocks += _notes(summary.get("notes"))
    return _write("paramgeom diff report", blocks, out_dir)


# --------------------------------------------------------------------------------------------
# trajectory report
# --------------------------------------------------------------------------------------------


def _lock_words(lock: Mapping[str, Any]) -> str:
    step = lock.get("lock_step")
    if step is None:
        return "not locked"
    frac = lock.get("lock_fraction")
    return f"step {step}" + (f" ({_pct(frac, 1)} of training)" if _finite(frac) is not None else "")


def write_trajectory_report(summary: dict, out_dir: Path, plots: list[Path]) -> list[Path]:
    """Write ``report.md`` and ``report.html`` for a ``paramgeom trajectory`` run.

    ``summary`` holds :func:`~paramgeom.report.aggregate.summarize_trajectory`'s ``steps``,
    ``lock`` and ``lock_by_module`` (and optionally ``steps_by_module``, ``k``,
    ``lock_threshold``) plus, optional, ``rules``, ``inputs`` and ``notes``. Sections: the
    paper's locking figures beside this run's (OPD locks within the first ~10% of training to
    fewer than 16 dimensions: DESIGN "Subspace locking"), the rules (the lock rule in words),
    the per-step table (mean srank(dW_t), ||dW_t||_F, Hill alpha, Sim_K(t, t_end), unchanged
    fraction), the lock per module type, the plots, caveats (K relative to the width; the
    unchanged fraction falls with update size) and notes. Returns both paths.
    """
    out_dir = Path(out_dir)
    summary = summary or {}
    steps = list(summary.get("steps") or [])
    lock = summary.get("lock") or {}
    k = summary.get("k", lock.get("k", 16))
    thr = summary.get("lock_threshold", lock.get("threshold", 0.9))
    last = steps[-1] if steps else {}
    at_lock = next((s for s in steps if s.get("step") == lock.get("lock_step")), {})

    headline = [
        [
            "Lock step: Sim_K(t, t_end) stays >= threshold and stable rank stays < K",
            PAPER["lock_time"]["OPD"],
            _lock_words(lock),
        ],
        [
            "Locked update dimension: mean stable rank of dW_t (at the lock step / final step)",
            PAPER["locked_dimension"]["OPD"],
            _pair(_num(at_lock.get("stable_rank_mean")), _num(last.get("stable_rank_mean")))
            if at_lock
            else _num(last.get("stable_rank_mean")),
        ],
        [
            "Unchanged parameters at the final step (bf16 rule)",
            PAPER["unchanged"]["OPD"],
            _pct(last.get("unchanged_fraction")),
        ],
    ]
    blocks: list[Any] = [
        _H(1, "Ours vs paper"),
        _P(f"Paper: {PAPER['setting']}, OPD run. This run: the checkpoints listed under Inputs."),
        _Table(["Diagnostic", "Paper (OPD)", "This run"], headline),
        _P(CAVEAT_DIMENSION),
        _P(CAVEAT_UPDATE_SIZE),
    ]
    blocks += _rules(
        summary.get("rules"),
        [
            f"K = {k}, lock threshold = {_value(thr)}",
            str(lock.get("rule") or lock_rule(int(k), float(thr))),
            "Sim_K(t, t_end) = ||V_K(t)^T V_K(t_end)||_F^2 / K, V_K the top-K right singular "
            "vectors of dW_t = W_t - W_0 (DESIGN 'Trajectory').",
        ]
        + (
            [f"unchanged fraction per step: {summary['unchanged_fraction_weighting']}"]
            if summary.get("unchanged_fraction_weighting")
            else []
        ),
    )
    blocks += _inputs(summary.get("inputs"))

    blocks.append(_H(1, "Per step"))
    if steps:
        rows = [
            [
                _int(s.get("step")),
                _int(s.get("n_matrices")),
                _num(s.get("stable_rank_mean")),
                _num(s.get("frobenius_delta")),
                _num(s.get("hill_alpha_mean")),
                _num(s.get("sim_k_mean")),
                _pct(s.get("unchanged_fraction")),
            ]
            for s in steps
        ]
        headers = [
            "step",
            "matrices",
            "stable rank (mean)",
            "||dW_t||_F",
            "Hill alpha (mean)",
            "Sim_K(t, t_end) (mean)",
            "unchanged",
        ]
        blocks.append(_Table(headers, rows))
    else:
        blocks.append(_P("No steps."))

    lock_by_module = summary.get("lock_by_module") or {}
    if lock_by_module:
        rows = [
            [
                str(m),
                _lock_words(lock_by_module[m]),
                _int(lock_by_module[m].get("final_step")),
            ]
            for m in sorted(lock_by_module, key=module_sort_key)
        ]
        blocks += [
            _H(1, "Lock by module type"),
            _Table(["module", "lock", "final step"], rows),
        ]
    blocks += _plots(plots, out_dir)
    blocks += _notes(summary.get("notes"))
    return _write("paramgeom trajectory report", blocks, out_dir)
