"""A small, dependency-free SVG drawing layer for the report plots (report/plots.py).

What the plots need and nothing more: :class:`Scale` (a data interval, linear or log10, with
"nice" tick values and their labels), :class:`Chart` (one axes box: bars, lines, dots,
reference lines, axis titles, a figure title and a legend outside the box, on the right),
:func:`heatmap` (a labelled grid of coloured cells with a vertical colour bar), two colour
ramps of our own (:data:`FRACTION`, :data:`ANGLE`), :func:`png` (an RGB image, for grids too
large to draw cell by cell) and :func:`escape`.

Rules kept everywhere: every piece of text is XML-escaped (names come from untrusted
checkpoint files; characters XML cannot carry become U+FFFD), numbers are written with a
fixed format, and no id depends on a hash or the clock, so the same input gives the same
bytes. Text widths are estimated (:data:`CHAR_W`), not measured: there is no font engine.
"""

from __future__ import annotations

import base64
import itertools
import math
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ANGLE",
    "FRACTION",
    "GREY",
    "Chart",
    "Key",
    "Ramp",
    "Scale",
    "escape",
    "heatmap",
    "num",
    "palette",
    "png",
]

GREY = "#d9d9d9"  # cells without a value (None, NaN, inf)
FONT = "DejaVu Sans,Helvetica,Arial,sans-serif"
FONT_SIZE = 11  # tick labels, legend
LABEL_SIZE = 12  # axis titles
TITLE_SIZE = 14
CHAR_W = 0.6  # mean advance of a sans-serif glyph, in ems: layout only
MAX_LABEL = 40  # longer data labels are cut, with the full text in a <title> (tooltip)
RECT_CELLS_MAX = 4000  # above this a heat map is one <image>, not one <rect> per cell
LABEL_CELLS_MAX = 240  # at most this many cells get their value written in them

# XML 1.0 cannot carry these at all, not even as character references.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "'": "&#39;",
        # as references, so that parsers' whitespace normalisation cannot change them
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


def escape(text: object) -> str:
    """``str(text)`` safe as XML element content and as a quoted attribute value."""
    return _NOT_XML.sub("\ufffd", str(text)).translate(_ESCAPES)


def num(v: float) -> str:
    """A coordinate or size: two decimals at most, no trailing zeros, never ``-0``."""
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def text_width(text: str, size: float = FONT_SIZE) -> float:
    """Estimated width of ``text`` in pixels at ``size``."""
    return CHAR_W * size * len(text)


def _finite(v: object) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------------------------
# colours
# --------------------------------------------------------------------------------------------


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


_GREY_RGB = _rgb(GREY)


class Ramp:
    """A colour map: linear interpolation in sRGB between evenly spaced anchor colours."""

    def __init__(self, anchors: Sequence[str]) -> None:
        if len(anchors) < 2:
            raise ValueError("a ramp needs at least two anchor colours")
        self.anchors = tuple(anchors)
        self._rgb = [_rgb(a) for a in anchors]

    def rgb(self, value: object, vmin: float = 0.0, vmax: float = 1.0) -> tuple[int, int, int]:
        """Colour of ``value`` on ``[vmin, vmax]`` (clamped); grey when it is not finite."""
        return self.rgb_many([value], vmin, vmax)[0]

    def rgb_many(
        self, values: Iterable[object], vmin: float = 0.0, vmax: float = 1.0
    ) -> list[tuple[int, int, int]]:
        """:meth:`rgb` of each value (one loop: a 10,000-layer heat map has 50,000 cells)."""
        n = len(self._rgb) - 1
        scale = n / (vmax - vmin) if vmax > vmin else 0.0
        segments = [
            (a[0], a[1], a[2], b[0] - a[0], b[1] - a[1], b[2] - a[2])
            for a, b in itertools.pairwise(self._rgb)
        ]
        inf = math.inf
        out: list[tuple[int, int, int]] = []
        for value in values:
            v = value if type(value) is float else _finite(value)  # floats: the common case
            if v is None or not -inf < v < inf:
                out.append(_GREY_RGB)
                continue
            pos = (v - vmin) * scale
            pos = 0.0 if pos <= 0 else min(pos, float(n))
            i = min(int(pos), n - 1)
            f = pos - i
            r, g, b, dr, dg, db = segments[i]
            out.append((int(r + dr * f + 0.5), int(g + dg * f + 0.5), int(b + db * f + 0.5)))
        return out

    def __call__(self, value: object, vmin: float = 0.0, vmax: float = 1.0) -> str:
        """``#rrggbb`` of ``value`` on ``[vmin, vmax]``; :data:`GREY` when not finite."""
        return _hex(self.rgb(value, vmin, vmax))


# Dark blue -> teal -> yellow, lightness rising steadily: for fractions in [0, 1].
FRACTION = Ramp(["#172a5a", "#1d5e8c", "#1b9a8a", "#5cc46a", "#f2e33a"])
# Near black -> purple -> orange -> pale yellow, lightness rising steadily: for angles.
ANGLE = Ramp(["#06040f", "#4b1b7a", "#b63a6b", "#f4893a", "#fcf0c4"])

# Series colours (the usual ten, then twenty when more series are drawn).
PALETTE_10 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
PALETTE_20 = (
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728",
    "#ff9896", "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2",
    "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
)  # fmt: skip


def palette(n: int) -> tuple[str, ...]:
    """Colours for ``n`` series (cycled when there are more than 20)."""
    return PALETTE_10 if n <= 10 else PALETTE_20


def _ink(rgb: tuple[int, int, int]) -> str:
    """Black or white, whichever contrasts more with ``rgb`` (WCAG relative luminance)."""

    def lin(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(rgb[0]) + 0.7152 * lin(rgb[1]) + 0.0722 * lin(rgb[2])
    return "black" if lum > 0.179 else "white"


def png(pixels: Sequence[Sequence[tuple[int, int, int]]]) -> bytes:
    """An 8-bit RGB PNG of ``pixels`` (rows top to bottom, each a sequence of (r, g, b))."""
    height = len(pixels)
    width = len(pixels[0]) if height else 0
    if not width or any(len(row) != width for row in pixels):
        raise ValueError("pixels must be a non-empty rectangle")
    # each scanline: filter type 0 (none), then the row's bytes
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in pixels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------------
# scales and ticks
# --------------------------------------------------------------------------------------------

_SUPERSCRIPT = str.maketrans(
    "-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079"
)


def nice_step(span: float, target: int, integer: bool = False) -> float:
    """The smallest 1, 2 or 5 times a power of ten giving at most about ``target`` steps."""
    raw = span / max(target, 1)
    if integer and raw <= 1:
        return 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 5):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10 * mag


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def _linear_label(v: float, step: float) -> str:
    big = max(abs(v), step)
    if step >= 1e-4 and big < 1e6:
        s = f"{v:.{_decimals(step)}f}"
    else:  # scientific, with just enough digits to tell neighbouring ticks apart
        digits = max(0, math.floor(math.log10(big)) - math.floor(math.log10(step) + 1e-9))
        s = f"{v:.{digits}e}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def _log_label(v: float) -> str:
    mantissa, exponent = f"{v:.0e}".split("e")
    power = "10" + str(int(exponent)).translate(_SUPERSCRIPT)
    return power if mantissa == "1" else f"{mantissa}\u00d7{power}"


_LOG_LIMIT = 307  # largest |exponent| of a fitted scale's bounds


class Scale:
    """The data interval ``[lo, hi]`` of one axis, mapped onto ``[0, 1]``; linear or log10.

    ``integer``: ticks are whole numbers (counts, steps).
    """

    def __init__(self, lo: float, hi: float, log: bool = False, integer: bool = False) -> None:
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"bad interval [{lo}, {hi}]")
        if log and lo <= 0:
            raise ValueError("a log scale needs positive bounds")
        self.lo, self.hi, self.log, self.integer = float(lo), float(hi), log, integer

    @classmethod
    def fit(
        cls, values: Iterable[float], log: bool = False, margin: float = 0.05, integer: bool = False
    ) -> Scale:
        """The interval of ``values`` widened by ``margin`` of its span on both sides (in
        decades on a log scale); a single value gets half a unit (half a decade) each side.
        Non-finite values (and non-positive ones on a log scale) are ignored."""
        vals = [v for v in (_finite(x) for x in values) if v is not None and (v > 0 or not log)]
        if not vals:
            return cls(1.0, 10.0, log=True) if log else cls(0.0, 1.0, integer=integer)
        lo, hi = min(vals), max(vals)
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        pad = (hi - lo) * margin if hi > lo else 0.5
        # Padded bounds stay inside float's normal range (its span and 10**bound finite):
        # data out there lie beyond the box's edge instead of overflowing the axis.
        limit = _LOG_LIMIT if log else 10.0**_LOG_LIMIT
        lo, hi = max(lo - pad, -limit), min(hi + pad, limit)
        if not hi > lo:
            lo, hi = (hi - 1.0, hi) if log else (hi - abs(hi) * 0.1 - 1.0, hi)
        if log:
            return cls(10.0**lo, 10.0**hi, log=True)
        return cls(lo, hi, integer=integer)

    def frac(self, v: float) -> float:
        """Position of ``v`` on the axis: 0 at ``lo``, 1 at ``hi`` (outside for values beyond)."""
        if self.log:
            a = math.log10(self.lo)
            return (math.log10(v) - a) / (math.log10(self.hi) - a)
        return (v - self.lo) / (self.hi - self.lo)

    def ticks(self, target: int = 6) -> list[float]:
        """Nice tick values inside the interval: multiples of 1, 2 or 5 times a power of ten
        (linear); powers of ten, else 1-2-5 or 1..9 multiples of them when the interval holds
        fewer than two powers, else (an interval narrower than a step between those, such as
        the update sizes of a uniform fine-tune) the linear ticks, placed on the log axis."""
        if self.log:
            e0 = math.ceil(math.log10(self.lo) - 1e-9)
            e1 = math.floor(math.log10(self.hi) + 1e-9)
            if e1 - e0 + 1 >= 2:
                stride = max(1, math.ceil((e1 - e0 + 1) / max(target, 1)))
                return [float(f"1e{e}") for e in range(e0, e1 + 1) if e % stride == 0]
            for mults in ((1, 2, 5), range(1, 10)):
                ticks = [
                    t
                    for e in range(e0 - 1, e1 + 1)
                    for m in mults
                    if self.lo * (1 - 1e-9) <= (t := float(f"{m}e{e}")) <= self.hi * (1 + 1e-9)
                ]
                if len(ticks) >= 2:
                    return ticks
        step = nice_step(self.hi - self.lo, target, self.integer)
        k0 = math.ceil(self.lo / step - 1e-9)
        k1 = math.floor(self.hi / step + 1e-9)
        # through 12 significant digits: 0.6, not 0.6000000000000001
        return [float(f"{k * step:.12g}") for k in range(k0, k1 + 1)]

    def labels(self, ticks: Sequence[float]) -> list[str]:
        """Labels of ``ticks``: ``10ⁿ`` or ``m×10ⁿ`` for the log ticks of one digit times a
        power of ten, else plain numbers with one number of decimals for all."""
        if self.log and all(float(f"{t:.0e}") == t for t in ticks):
            return [_log_label(t) for t in ticks]
        if len(ticks) >= 2:
            # the spacing as a nice number again: 0.0101 - 0.0100 is 9.99...e-05
            step = float(f"{min(b - a for a, b in itertools.pairwise(ticks)):.6g}")
        else:
            step = nice_step(self.hi - self.lo, 6, self.integer)
        return [_linear_label(t, step) for t in ticks]


# --------------------------------------------------------------------------------------------
# document pieces
# --------------------------------------------------------------------------------------------


def _document(width: float, height: float, title: str, body: list[str]) -> str:
    head = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{num(width)}" height="{num(height)}" viewBox="0 0 {num(width)} {num(height)}" '
        f'font-family="{FONT}" font-size="{FONT_SIZE}">\n'
        f"<title>{escape(title)}</title>\n"
        f'<rect width="{num(width)}" height="{num(height)}" fill="white"/>\n'
    )
    return head + "\n".join(body) + "\n</svg>\n"


def _text(
    x: float,
    y: float,
    text: str,
    anchor: str = "middle",
    size: float = FONT_SIZE,
    rotate: float = 0.0,
    fill: str | None = None,
    extra: str = "",
    cut: bool = False,
) -> str:
    """A ``<text>``; with ``cut`` (data labels), text longer than :data:`MAX_LABEL` is cut,
    with the whole of it in a tooltip."""
    shown = text if not cut or len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "\u2026"
    attrs = f'x="{num(x)}" y="{num(y)}"'
    if anchor != "start":
        attrs += f' text-anchor="{anchor}"'
    if size != FONT_SIZE:
        attrs += f' font-size="{num(size)}"'
    if fill:
        attrs += f' fill="{fill}"'
    if rotate:
        attrs += f' transform="rotate({num(rotate)} {num(x)} {num(y)})"'
    el = f"<text {attrs}{extra}>{escape(shown)}</text>"
    return el if shown == text else f"<g><title>{escape(text)}</title>{el}</g>"


def _label_width(text: str, size: float = FONT_SIZE) -> float:
    return text_width(text if len(text) <= MAX_LABEL else text[:MAX_LABEL], size)


_DASHES = {None: "", "dashed": ' stroke-dasharray="6 4"', "dotted": ' stroke-dasharray="1.5 3"'}


def _stroke(color: str, width: float, dash: str | None = None, opacity: float = 1.0) -> str:
    s = f'fill="none" stroke="{color}" stroke-width="{num(width)}"' + _DASHES[dash]
    if dash == "dotted":
        s += ' stroke-linecap="round"'
    if opacity < 1:
        s += f' stroke-opacity="{num(opacity)}"'
    return s


def _dots_path(points: Iterable[tuple[float, float]], color: str, r: float, opacity: float) -> str:
    """Round dots of radius ``r`` as one path of zero-length segments with round caps: one
    element per series (50,000 tensors make 50,000 dots), and points falling on the same
    tenth of a pixel drawn once."""
    seen = dict.fromkeys(f"M{x:.1f} {y:.1f}h0" for x, y in points)
    if not seen:
        return ""
    op = f' stroke-opacity="{num(opacity)}"' if opacity < 1 else ""
    return (
        f'<path d="{"".join(seen)}" fill="none" stroke="{color}" stroke-width="{num(2 * r)}" '
        f'stroke-linecap="round"{op}/>'
    )


@dataclass(frozen=True)
class Key:
    """One legend entry: a line (optionally dashed, optionally with dots), dots or a patch."""

    label: str
    color: str
    kind: str = "line"  # "line", "dots" or "patch"
    width: float = 1.5
    dash: str | None = None  # None, "dashed" or "dotted"
    opacity: float = 1.0
    dot: float = 0.0  # radius of the dot drawn on a line entry, px


def _legend(keys: Sequence[Key], x: float, y: float) -> tuple[list[str], float, float]:
    """Legend elements with their box's top left at (x, y); also the box's width and height."""
    row = 18.0
    w = 8 + 26 + 6 + max(_label_width(k.label) for k in keys) + 8
    h = 6 + row * len(keys) + 2
    out = [
        '<g class="legend">',
        f'<rect x="{num(x)}" y="{num(y)}" width="{num(w)}" height="{num(h)}" fill="white" '
        'stroke="#cccccc" stroke-width="0.8" rx="3"/>',
    ]
    for i, k in enumerate(keys):
        cy = y + 6 + row * i + row / 2 - 2
        x0, x1 = x + 8, x + 34
        if k.kind == "patch":
            op = f' fill-opacity="{num(k.opacity)}"' if k.opacity < 1 else ""
            out.append(
                f'<rect x="{num(x0 + 4)}" y="{num(cy - 5)}" width="18" height="10" '
                f'fill="{k.color}"{op}/>'
            )
        elif k.kind == "dots":
            out.append(_dots_path([(x0 + 13, cy)], k.color, 3.0, k.opacity))
        else:
            out.append(
                f'<line x1="{num(x0)}" y1="{num(cy)}" x2="{num(x1)}" y2="{num(cy)}" '
                f"{_stroke(k.color, k.width, k.dash, k.opacity)}/>"
            )
            if k.dot:
                out.append(_dots_path([(x0 + 13, cy)], k.color, k.dot, 1.0))
        out.append(_text(x1 + 6, cy + 4, k.label, anchor="start", cut=True))
    out.append("</g>")
    return out, w, h


# --------------------------------------------------------------------------------------------
# charts
# --------------------------------------------------------------------------------------------


class Chart:
    """One axes box of ``plot_w`` x ``plot_h`` pixels with its ticks, titles and legend.

    The margins are sized from the tick labels and the legend (outside the box, on the
    right, so it never hides data), hence the scales and legend are given up front. Data
    drawn with :meth:`bars`, :meth:`line`, :meth:`dots`, :meth:`hline` and :meth:`vline` is
    clipped to the box; :meth:`to_svg` returns the document.
    """

    def __init__(
        self,
        title: str,
        xlabel: str,
        ylabel: str,
        x: Scale,
        y: Scale,
        plot_w: float = 520,
        plot_h: float = 320,
        legend: Sequence[Key] = (),
    ) -> None:
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.x, self.y = x, y
        self.plot_w, self.plot_h = float(plot_w), float(plot_h)
        self.legend = list(legend)
        self.xticks = x.ticks(max(2, int(plot_w // 75)))
        self.yticks = y.ticks(max(2, int(plot_h // 45)))
        self.xlabels = x.labels(self.xticks)
        self.ylabels = y.labels(self.yticks)
        ytick_w = max((text_width(s) for s in self.ylabels), default=0.0)
        self.left = 10 + LABEL_SIZE + 10 + ytick_w + 8
        self.top = 40.0
        bottom = 8 + FONT_SIZE + 10 + LABEL_SIZE + 10
        legend_h = 0.0
        self.right = 20.0
        if self.legend:
            _, lw, legend_h = _legend(self.legend, 0, 0)
            self.right += 12 + lw
        self.width = max(self.left + self.plot_w + self.right, text_width(title, TITLE_SIZE) + 16)
        self.height = self.top + max(self.plot_h, legend_h) + bottom
        self._data: list[str] = []

    def px(self, v: float) -> float:
        """Horizontal pixel of the data value ``v``."""
        return self.left + self.x.frac(v) * self.plot_w

    def py(self, v: float) -> float:
        """Vertical pixel of the data value ``v`` (up is larger)."""
        return self.top + (1 - self.y.frac(v)) * self.plot_h

    def _ok(self, x: float, y: float) -> bool:
        return (
            math.isfinite(x)
            and math.isfinite(y)
            and (x > 0 or not self.x.log)
            and (y > 0 or not self.y.log)
        )

    def bars(
        self, edges: Sequence[float], counts: Sequence[int], color: str, opacity: float = 1.0
    ) -> None:
        """Histogram bars: bin ``i`` spans ``edges[i]..edges[i+1]`` with height ``counts[i]``."""
        op = f' fill-opacity="{num(opacity)}"' if opacity < 1 else ""
        out = [f'<g fill="{color}"{op} stroke="white" stroke-width="0.8">']
        base = self.py(max(0.0, self.y.lo))
        for i, c in enumerate(counts):
            if c <= 0:
                continue
            x0, x1, top = self.px(edges[i]), self.px(edges[i + 1]), self.py(c)
            out.append(
                f'<rect x="{num(x0)}" y="{num(top)}" width="{num(x1 - x0)}" '
                f'height="{num(base - top)}"/>'
            )
        out.append("</g>")
        self._data += out

    def line(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        color: str,
        width: float = 1.5,
        dash: str | None = None,
        opacity: float = 1.0,
        dot: float = 0.0,
    ) -> None:
        """A polyline through the points (skipping non-finite ones); ``dot``: radius of a dot
        drawn on each point."""
        pts = [(self.px(x), self.py(y)) for x, y in zip(xs, ys, strict=True) if self._ok(x, y)]
        if not pts:
            return
        coords = " ".join(f"{num(a)},{num(b)}" for a, b in pts)
        self._data.append(f'<polyline points="{coords}" {_stroke(color, width, dash, opacity)}/>')
        if dot:
            self._data.append(_dots_path(pts, color, dot, 1.0))

    def dots(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        color: str,
        r: float = 2.5,
        opacity: float = 1.0,
    ) -> None:
        """A scatter of round dots of radius ``r`` (non-finite points skipped)."""
        pts = ((self.px(x), self.py(y)) for x, y in zip(xs, ys, strict=True) if self._ok(x, y))
        el = _dots_path(pts, color, r, opacity)
        if el:
            self._data.append(el)

    def hline(self, y: float, color: str, width: float = 1.5, dash: str | None = None) -> None:
        """A horizontal line across the box at the data value ``y``."""
        py = self.py(y)
        self._data.append(
            f'<line x1="{num(self.left)}" y1="{num(py)}" x2="{num(self.left + self.plot_w)}" '
            f'y2="{num(py)}" {_stroke(color, width, dash)}/>'
        )

    def vline(self, x: float, color: str, width: float = 1.5, dash: str | None = None) -> None:
        """A vertical line across the box at the data value ``x``."""
        px = self.px(x)
        self._data.append(
            f'<line x1="{num(px)}" y1="{num(self.top)}" x2="{num(px)}" '
            f'y2="{num(self.top + self.plot_h)}" {_stroke(color, width, dash)}/>'
        )

    def to_svg(self) -> str:
        """The whole SVG document."""
        L, T, W, H = self.left, self.top, self.plot_w, self.plot_h
        body = [
            f'<clipPath id="plot-area"><rect x="{num(L)}" y="{num(T)}" width="{num(W)}" '
            f'height="{num(H)}"/></clipPath>',
            '<g class="data" clip-path="url(#plot-area)">',
            *self._data,
            "</g>",
            f'<rect class="frame" x="{num(L)}" y="{num(T)}" width="{num(W)}" height="{num(H)}" '
            'fill="none" stroke="black" stroke-width="0.8"/>',
            '<g class="xticks">',
        ]
        for t, s in zip(self.xticks, self.xlabels, strict=True):
            x = self.px(t)
            body.append(
                f'<line x1="{num(x)}" y1="{num(T + H)}" x2="{num(x)}" y2="{num(T + H + 4)}" '
                'stroke="black" stroke-width="0.8"/>'
            )
            body.append(_text(x, T + H + 6 + FONT_SIZE, s))
        body.append("</g>")
        body.append('<g class="yticks">')
        for t, s in zip(self.yticks, self.ylabels, strict=True):
            y = self.py(t)
            body.append(
                f'<line x1="{num(L - 4)}" y1="{num(y)}" x2="{num(L)}" y2="{num(y)}" '
                'stroke="black" stroke-width="0.8"/>'
            )
            body.append(_text(L - 7, y + FONT_SIZE * 0.35, s, anchor="end"))
        body.append("</g>")
        body.append(
            _text(L + W / 2, T + H + 8 + FONT_SIZE + 10 + LABEL_SIZE, self.xlabel,
                  size=LABEL_SIZE, extra=' class="xlabel"')
        )  # fmt: skip
        cy = T + H / 2
        body.append(
            _text(10 + LABEL_SIZE, cy, self.ylabel, size=LABEL_SIZE, rotate=-90,
                  extra=' class="ylabel"')
        )  # fmt: skip
        body.append(_title(L + W / 2, self.title, self.width))
        if self.legend:
            els, _, _ = _legend(self.legend, L + W + 12, T)
            body += els
        return _document(self.width, self.height, self.title, body)


def _title(x: float, text: str, width: float) -> str:
    """The figure title centred at ``x``, moved inwards where it would cross an edge."""
    half = text_width(text, TITLE_SIZE) / 2
    x = min(max(x, half + 8), width - half - 8)
    return (
        f'<text class="title" x="{num(x)}" y="24" text-anchor="middle" '
        f'font-size="{TITLE_SIZE}">{escape(text)}</text>'
    )


# --------------------------------------------------------------------------------------------
# heat maps
# --------------------------------------------------------------------------------------------


def heatmap(
    title: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    values: Sequence[Sequence[float | None]],
    ramp: Ramp,
    vmin: float,
    vmax: float,
    bar_label: str,
    fmt: str = ".2f",
    xlabel: str = "",
    ylabel: str = "",
) -> str:
    """An SVG heat map: row ``i`` (top to bottom) x column ``j`` coloured by ``values[i][j]``
    on ``ramp`` over ``[vmin, vmax]`` (grey when not finite), with a vertical colour bar.

    Up to :data:`RECT_CELLS_MAX` cells are ``<rect>`` elements (in row-major order, in the
    group of class ``cells``), and up to :data:`LABEL_CELLS_MAX` also show their value
    (``format(v, fmt)``); larger grids are one embedded PNG of one pixel per cell, stretched
    over the box without smoothing. Rows get a label every ``ceil(rows / 60)``.
    """
    n_r, n_c = len(values), len(col_labels)
    if n_r == 0 or n_c == 0 or any(len(line) != n_c for line in values):
        raise ValueError("values must be a non-empty rows x columns grid")
    if len(row_labels) != n_r:
        raise ValueError("one row label per row")
    if not vmax > vmin:
        vmax = vmin + 1.0
    # cells 64 x 22 px while the grid is small, the box at least 200 x 160 px, and a large
    # grid squeezed into at most 1600 x 3000 px (10,000 layers: 0.3 px a layer)
    plot_w = float(max(200, min(64 * n_c, 1600)))
    plot_h = float(max(160, min(22 * n_r, max(1200, min(3 * n_r, 3000)))))
    cw, ch = plot_w / n_c, plot_h / n_r

    cols = [str(c) for c in col_labels]
    col_w = max(_label_width(c) for c in cols)
    rotate = col_w > cw - 4
    xtick_h = col_w * 0.71 + FONT_SIZE if rotate else FONT_SIZE
    row_step = max(1, math.ceil(n_r / 60))
    rows_shown = [(i, str(row_labels[i])) for i in range(0, n_r, row_step)]
    row_w = max(_label_width(s) for _, s in rows_shown)

    bar = Scale(vmin, vmax)
    bar_h = min(plot_h, 600.0)
    bar_ticks = bar.ticks(max(2, int(bar_h // 45)))
    bar_labels = bar.labels(bar_ticks)
    bar_tick_w = max((text_width(s) for s in bar_labels), default=0.0)

    L = 10 + LABEL_SIZE + 10 + row_w + 8
    if rotate:  # a slanted column label reaches left of its column by 0.71 of its length
        L = max(L, *(0.71 * _label_width(c) - (j + 0.5) * cw + 10 for j, c in enumerate(cols)))
    T = 40.0
    bar_x = L + plot_w + 16
    width = bar_x + 14 + 6 + bar_tick_w + 8 + LABEL_SIZE + 12
    height = T + plot_h + 8 + xtick_h + 10 + LABEL_SIZE + 10
    width = max(width, text_width(title, TITLE_SIZE) + 16)

    body: list[str] = []
    rgb = [ramp.rgb_many(line, vmin, vmax) for line in values]
    if n_r * n_c <= RECT_CELLS_MAX:
        body.append('<g class="cells" shape-rendering="crispEdges">')
        for i, line in enumerate(rgb):
            for j, c in enumerate(line):
                body.append(
                    f'<rect x="{num(L + j * cw)}" y="{num(T + i * ch)}" width="{num(cw)}" '
                    f'height="{num(ch)}" fill="{_hex(c)}"/>'
                )
        body.append("</g>")
    else:
        # One <rect> per cell for 10,000 layers would be megabytes of SVG; one pixel per cell
        # is a few kilobytes, and pixelated scaling keeps the cells sharp.
        uri = "data:image/png;base64," + base64.b64encode(png(rgb)).decode("ascii")
        body.append(
            f'<image class="cells" x="{num(L)}" y="{num(T)}" width="{num(plot_w)}" '
            f'height="{num(plot_h)}" preserveAspectRatio="none" '
            f'style="image-rendering:pixelated" xlink:href="{uri}"/>'
        )
    if n_r * n_c <= LABEL_CELLS_MAX:
        size = min(10.0, 0.7 * ch)
        body.append('<g class="cell-labels">')
        for i, line in enumerate(values):
            for j, v in enumerate(line):
                f = _finite(v)
                if f is None:
                    continue
                body.append(
                    _text(L + (j + 0.5) * cw, T + (i + 0.5) * ch + 0.35 * size,
                          format(f, fmt), size=size, fill=_ink(rgb[i][j]))
                )  # fmt: skip
        body.append("</g>")
    body.append(
        f'<rect class="frame" x="{num(L)}" y="{num(T)}" width="{num(plot_w)}" '
        f'height="{num(plot_h)}" fill="none" stroke="black" stroke-width="0.8"/>'
    )

    body.append('<g class="xticks">')
    for j, c in enumerate(cols):
        x = L + (j + 0.5) * cw
        body.append(
            f'<line x1="{num(x)}" y1="{num(T + plot_h)}" x2="{num(x)}" '
            f'y2="{num(T + plot_h + 4)}" stroke="black" stroke-width="0.8"/>'
        )
        if rotate:
            y = T + plot_h + 8
            body.append(_text(x, y + FONT_SIZE * 0.7, c, anchor="end", rotate=-45, cut=True))
        else:
            body.append(_text(x, T + plot_h + 6 + FONT_SIZE, c, cut=True))
    body.append("</g>")
    body.append('<g class="yticks">')
    for i, s in rows_shown:
        y = T + (i + 0.5) * ch
        body.append(
            f'<line x1="{num(L - 4)}" y1="{num(y)}" x2="{num(L)}" y2="{num(y)}" '
            'stroke="black" stroke-width="0.8"/>'
        )
        body.append(_text(L - 7, y + FONT_SIZE * 0.35, s, anchor="end", cut=True))
    body.append("</g>")
    if xlabel:
        body.append(
            _text(L + plot_w / 2, T + plot_h + 8 + xtick_h + 10 + LABEL_SIZE - 2, xlabel,
                  size=LABEL_SIZE, extra=' class="xlabel"')
        )  # fmt: skip
    if ylabel:
        body.append(
            _text(10 + LABEL_SIZE, T + plot_h / 2, ylabel, size=LABEL_SIZE, rotate=-90,
                  extra=' class="ylabel"')
        )  # fmt: skip

    # colour bar: a gradient through the ramp's anchors is exactly the ramp (both interpolate
    # linearly in sRGB), bottom = vmin
    last = len(ramp.anchors) - 1
    stops = "".join(
        f'<stop offset="{num(k / last)}" stop-color="{a}"/>' for k, a in enumerate(ramp.anchors)
    )
    body.append('<g class="colorbar">')
    body.append(
        f'<linearGradient id="colorbar-ramp" x1="0" y1="1" x2="0" y2="0">{stops}</linearGradient>'
    )
    body.append(
        f'<rect x="{num(bar_x)}" y="{num(T)}" width="14" height="{num(bar_h)}" '
        'fill="url(#colorbar-ramp)" stroke="black" stroke-width="0.8"/>'
    )
    for t, s in zip(bar_ticks, bar_labels, strict=True):
        y = T + (1 - bar.frac(t)) * bar_h
        body.append(
            f'<line x1="{num(bar_x + 14)}" y1="{num(y)}" x2="{num(bar_x + 18)}" y2="{num(y)}" '
            'stroke="black" stroke-width="0.8"/>'
        )
        body.append(_text(bar_x + 20, y + FONT_SIZE * 0.35, s, anchor="start"))
    lx = bar_x + 14 + 6 + bar_tick_w + 8 + LABEL_SIZE
    body.append(_text(lx, T + bar_h / 2, bar_label, size=LABEL_SIZE, rotate=-90))
    body.append("</g>")
    body.append(_title(L + plot_w / 2, title, width))
    return _document(width, height, title, body)
