"""The SVG drawing layer of the report plots (paramgeom.report.svg): values, not only files.

Documents are parsed with xml.etree.ElementTree; heat map colours, tick values and pixel
positions are checked against what they must be; the PNG of a large grid is decoded here
with zlib alone.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import xml.etree.ElementTree as ET
import zlib

import pytest

from paramgeom.report import svg

NS = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}href"
HOSTILE = "<script>alert(\"x\")</script>&'q'"


def parse(text: str) -> ET.Element:
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == NS + "svg"
    return root


def group(root: ET.Element, cls: str) -> ET.Element:
    found = [el for el in root.iter() if el.get("class") == cls]
    assert len(found) == 1, cls
    return found[0]


def texts(el: ET.Element) -> list[str]:
    return [t.text or "" for t in el.iter(NS + "text")]


def decode_png(data: bytes) -> list[list[tuple[int, int, int]]]:
    """Pixels of an 8-bit RGB PNG with filter 0 rows, checking signature, CRCs and chunks."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, tag
        chunks.append((tag, body))
        pos += 12 + length
    assert [t for t, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    rows = []
    for i in range(height):
        line = raw[i * stride : (i + 1) * stride]
        assert line[0] == 0  # no filter
        rows.append([tuple(line[1 + 3 * j : 4 + 3 * j]) for j in range(width)])
    return rows


def luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


# --------------------------------------------------------------------------------------------
# text, numbers, colours
# --------------------------------------------------------------------------------------------


def test_escape_makes_any_text_safe_and_round_trips():
    nasty = HOSTILE + "\t\n\r]]>--\x00\x1b\ud800"
    el = ET.fromstring(f'<a b="{svg.escape(nasty)}">{svg.escape(nasty)}</a>')
    # characters XML cannot carry become U+FFFD; everything else comes back as it was
    want = HOSTILE + "\t\n\r]]>--\ufffd\ufffd\ufffd"
    assert el.text == want and el.get("b") == want
    assert "<" not in svg.escape("<") and '"' not in svg.escape('"')


def test_numbers_have_one_spelling():
    assert [svg.num(v) for v in (0.0, -0.0, -0.001, 1.0, 1.5, 2.345, 100.0, -3.25)] == [
        "0", "0", "0", "1", "1.5", "2.35", "100", "-3.25",
    ]  # fmt: skip


def test_ramps_run_between_their_anchors_and_grey_out_bad_values():
    for ramp in (svg.FRACTION, svg.ANGLE):
        a = ramp.anchors
        assert ramp(0.0) == a[0] and ramp(1.0) == a[-1] and ramp(0.5) == a[2]
        assert ramp(0.25) == a[1] and ramp(0.75) == a[3]
        assert ramp(-3.0) == a[0] and ramp(7.0) == a[-1]  # clamped
        assert ramp(5.0, 0.0, 10.0) == a[2]  # on [vmin, vmax]
        # lightness rises steadily along both ramps (perceptual order of the values)
        lums = [luminance(ramp(i / 20)) for i in range(21)]
        assert all(x < y for x, y in zip(lums, lums[1:], strict=False))
        for bad in (math.nan, math.inf, -math.inf, None, "x", True):
            assert ramp(bad) == svg.GREY == "#d9d9d9"
    # halfway between two anchors is the mean of their channels
    r0, g0, b0 = (int(svg.FRACTION.anchors[0][i : i + 2], 16) for i in (1, 3, 5))
    r1, g1, b1 = (int(svg.FRACTION.anchors[1][i : i + 2], 16) for i in (1, 3, 5))
    got = svg.FRACTION.rgb(0.125)
    assert got == tuple(int(x + 0.5) for x in ((r0 + r1) / 2, (g0 + g1) / 2, (b0 + b1) / 2))
    assert svg.FRACTION.rgb_many([0.0, math.nan, 1.0]) == [
        svg.FRACTION.rgb(0.0), (217, 217, 217), svg.FRACTION.rgb(1.0),
    ]  # fmt: skip


def test_png_writer_round_trips():
    pixels = [[(0, 0, 0), (255, 0, 10)], [(1, 2, 3), (250, 251, 252)], [(9, 9, 9), (0, 0, 0)]]
    assert decode_png(svg.png(pixels)) == pixels
    with pytest.raises(ValueError):
        svg.png([])
    with pytest.raises(ValueError):
        svg.png([[(0, 0, 0)], []])


# --------------------------------------------------------------------------------------------
# scales
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "target", "integer", "ticks", "labels"),
    [
        (0.0, 1.0, 6, False, [0, 0.2, 0.4, 0.6, 0.8, 1],
         ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
        (-0.02, 1.02, 7, False, [0, 0.2, 0.4, 0.6, 0.8, 1],
         ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
        (0.0, 37.0, 6, False, [0, 10, 20, 30], ["0", "10", "20", "30"]),
        (-3.0, -1.0, 5, False, [-3, -2.5, -2, -1.5, -1], ["-3.0", "-2.5", "-2.0", "-1.5", "-1.0"]),
        (95.0, 505.0, 5, True, [100, 200, 300, 400, 500], ["100", "200", "300", "400", "500"]),
        (0.5, 3.5, 12, True, [1, 2, 3], ["1", "2", "3"]),  # no half steps on a count axis
        (-0.13, 0.13, 6, False, [-0.1, -0.05, 0, 0.05, 0.1],
         ["-0.10", "-0.05", "0.00", "0.05", "0.10"]),
        (1e-6, 3e-6, 4, False, [1e-6, 1.5e-6, 2e-6, 2.5e-6, 3e-6],
         ["1.0e-06", "1.5e-06", "2.0e-06", "2.5e-06", "3.0e-06"]),
    ],
)  # fmt: skip
def test_linear_ticks_are_nice(lo, hi, target, integer, ticks, labels):
    s = svg.Scale(lo, hi, integer=integer)
    got = s.ticks(target)
    assert got == pytest.approx(ticks, abs=1e-15)
    assert s.labels(got) == labels


def test_log_ticks_and_labels():
    s = svg.Scale(1e-4, 1.0, log=True)
    assert s.ticks(6) == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert s.labels(s.ticks(6)) == ["10⁻⁴", "10⁻³", "10⁻²", "10⁻¹", "10⁰"]
    wide = svg.Scale(1e-9, 1e3, log=True)
    assert wide.ticks(6) == [1e-9, 1e-6, 1e-3, 1.0, 1e3]  # every third decade
    narrow = svg.Scale(2e-3, 8e-3, log=True)  # no power of ten inside: 1-2-5 multiples
    assert narrow.ticks(6) == [2e-3, 5e-3]
    assert narrow.labels([2e-3, 5e-3]) == ["2×10⁻³", "5×10⁻³"]
    tight = svg.Scale(2.1e-3, 4.9e-3, log=True)  # not even those: 1..9 multiples
    assert tight.ticks(6) == [3e-3, 4e-3]
    # narrower than a 1..9 step (a uniform fine-tune's update sizes): linear ticks, log places
    sliver = svg.Scale(0.009916, 0.010302, log=True)
    assert sliver.ticks(7) == [0.0100, 0.0101, 0.0102, 0.0103]
    assert sliver.labels(sliver.ticks(7)) == ["0.0100", "0.0101", "0.0102", "0.0103"]
    assert sliver.frac(0.0101) == pytest.approx(
        math.log10(0.0101 / 0.009916) / math.log10(0.010302 / 0.009916)
    )
    with pytest.raises(ValueError):
        svg.Scale(0.0, 1.0, log=True)


def test_scale_fit_pads_the_data():
    s = svg.Scale.fit([1.0, 3.0, math.nan])
    assert (s.lo, s.hi) == pytest.approx((0.9, 3.1))
    s = svg.Scale.fit([2.0])
    assert (s.lo, s.hi) == (1.5, 2.5)
    s = svg.Scale.fit([1e-4, 1e-2, 0.0, -1.0], log=True)  # non-positive values are left out
    assert (math.log10(s.lo), math.log10(s.hi)) == pytest.approx((-4.1, -1.9))


def test_log_axis_puts_decades_at_their_pixels():
    chart = svg.Chart(
        "t", "x", "y", svg.Scale(1e-4, 1.0, log=True), svg.Scale(0.0, 1.0), plot_w=400
    )
    left = chart.left
    assert chart.px(1e-3) == pytest.approx(left + 100)
    assert chart.px(1e-1) == pytest.approx(left + 300)
    assert chart.py(0.0) == pytest.approx(chart.top + 320) and chart.py(1.0) == chart.top
    root = parse(chart.to_svg())
    frame = group(root, "frame")
    assert float(frame.get("x")) == pytest.approx(left)
    assert float(frame.get("width")) == 400
    ticks = group(root, "xticks")
    at = {t.text: float(t.get("x")) for t in ticks.iter(NS + "text")}
    assert at["10⁻³"] == pytest.approx(left + 100, abs=0.01)
    assert at["10⁻¹"] == pytest.approx(left + 300, abs=0.01)
    xs = [float(line.get("x1")) for line in ticks.iter(NS + "line")]
    assert xs == pytest.approx([left + 100 * i for i in range(5)], abs=0.01)


# --------------------------------------------------------------------------------------------
# charts
# --------------------------------------------------------------------------------------------


def _dots(path: ET.Element) -> list[float]:
    """x, y, x, y, ... of the dots of a dot path."""
    return [float(v) for xy in re.findall(r"M([-\d.]+) ([-\d.]+)h0", path.get("d")) for v in xy]


def test_chart_draws_data_where_the_scales_say():
    keys = [svg.Key(HOSTILE, "#ff0000", kind="dots"), svg.Key("x" * 60, "#00ff00")]
    chart = svg.Chart(
        "Title & <b>", "x <label>", "y", svg.Scale(0.0, 10.0), svg.Scale(-1.0, 1.0), legend=keys
    )
    chart.dots([1.0, 5.0, math.nan, 5.0], [0.0, 0.5, 0.2, 0.5], "#ff0000", r=2.5, opacity=0.75)
    chart.line([0.0, 10.0], [-1.0, 1.0], "#00ff00", dot=2.0)
    chart.hline(0.25, "#c44e52", dash="dashed")
    chart.vline(2.0, "#55a868", dash="dotted")
    chart.bars([0.0, 2.0, 4.0], [1, 0], "#0000ff")
    root = parse(chart.to_svg())
    data = group(root, "data")
    assert data.get("clip-path") == "url(#plot-area)"
    paths = list(data.iter(NS + "path"))
    # the NaN point is skipped and the repeated point drawn once
    want = [chart.px(1.0), chart.py(0.0), chart.px(5.0), chart.py(0.5)]
    assert _dots(paths[0]) == pytest.approx(want, abs=0.05)
    assert paths[0].get("stroke-width") == "5" and paths[0].get("stroke-opacity") == "0.75"
    poly = next(data.iter(NS + "polyline"))
    pts = [float(v) for p in poly.get("points").split() for v in p.split(",")]
    right, bottom = chart.left + chart.plot_w, chart.top + chart.plot_h
    assert pts == pytest.approx([chart.left, bottom, right, chart.top], abs=0.005)
    h, v = list(data.iter(NS + "line"))
    assert float(h.get("y1")) == float(h.get("y2")) == pytest.approx(chart.py(0.25), abs=0.01)
    assert h.get("stroke-dasharray") == "6 4"
    assert float(v.get("x1")) == pytest.approx(chart.px(2.0), abs=0.01)
    (bar,) = data.iter(NS + "rect")  # the empty bin has no bar
    assert float(bar.get("height")) == pytest.approx(chart.py(0.0) - chart.py(1.0), abs=0.01)
    # text from data is escaped, parses back whole, long labels are cut with a tooltip
    title = group(root, "title")
    assert title.text == "Title & <b>" and root.find(NS + "title").text == "Title & <b>"
    legend = group(root, "legend")
    assert HOSTILE in texts(legend)
    assert "x" * 39 + "…" in texts(legend)
    assert [t.text for t in legend.iter(NS + "title")] == ["x" * 60]
    assert group(root, "xlabel").text == "x <label>"


# --------------------------------------------------------------------------------------------
# heat maps
# --------------------------------------------------------------------------------------------


def test_small_heatmap_cells_and_labels_follow_the_values():
    values = [[0.0, 0.5], [1.0, math.nan], [None, 0.25]]
    text = svg.heatmap("t", ["0", "1", "2"], ["q", HOSTILE], values, svg.FRACTION, 0.0, 1.0, "f")
    root = parse(text)
    fills = [r.get("fill") for r in group(root, "cells").iter(NS + "rect")]
    a = svg.FRACTION.anchors
    assert fills == [a[0], a[2], a[4], svg.GREY, svg.GREY, a[1]]
    labels = group(root, "cell-labels")
    assert texts(labels) == ["0.00", "0.50", "1.00", "0.25"]  # none on the grey cells
    inks = [t.get("fill") for t in labels.iter(NS + "text")]
    assert inks == ["white", "black", "black", "white"]  # dark blue, teal, yellow, blue
    assert texts(group(root, "xticks")) == ["q", HOSTILE]
    assert texts(group(root, "yticks")) == ["0", "1", "2"]
    assert not list(root.iter(NS + "image"))
    bar = group(root, "colorbar")
    stops = [s.get("stop-color") for s in bar.iter(NS + "stop")]
    assert stops == list(a)
    assert texts(bar) == ["0.0", "0.5", "1.0", "f"]  # ticks of a 160 px bar, then its title


def test_heatmap_of_constant_values_and_unlabelled_sizes():
    # vmax <= vmin: the scale is widened instead of dividing by zero
    text = svg.heatmap("t", ["0"], ["q"], [[0.0]], svg.ANGLE, 0.0, 0.0, "degrees", fmt=".2g")
    root = parse(text)
    assert [r.get("fill") for r in group(root, "cells").iter(NS + "rect")] == [svg.ANGLE(0.0)]
    assert texts(group(root, "cell-labels")) == ["0"]
    # 241 cells: rects without numbers
    values = [[i / 240] for i in range(241)]
    root = parse(svg.heatmap("t", [str(i) for i in range(241)], ["q"], values, svg.FRACTION,
                             0.0, 1.0, "f"))  # fmt: skip
    assert len(list(group(root, "cells").iter(NS + "rect"))) == 241
    assert not [el for el in root.iter() if el.get("class") == "cell-labels"]
    # a row label every ceil(241 / 60) = 5 rows
    assert texts(group(root, "yticks")) == [str(i) for i in range(0, 241, 5)]


def test_large_heatmap_is_one_png_of_its_cells():
    n_rows, n_cols = 1001, 4  # 4,004 cells: over the rect limit
    values = [[((i * 7 + j * 3) % 101) / 100 for j in range(n_cols)] for i in range(n_rows)]
    values[3][1] = math.nan
    values[10][0] = None
    text = svg.heatmap(
        "big", [str(i) for i in range(n_rows)], ["q", "k", "v", "o"], values, svg.ANGLE,
        0.0, 1.0, "degrees",
    )  # fmt: skip
    root = parse(text)
    # background, frame and colour bar: no rect per cell
    assert len(list(root.iter(NS + "rect"))) == 3
    (image,) = root.iter(NS + "image")
    assert image.get("class") == "cells"
    assert image.get("preserveAspectRatio") == "none"
    assert image.get("style") == "image-rendering:pixelated"
    frame = group(root, "frame")
    for attr in ("x", "y", "width", "height"):
        assert image.get(attr) == frame.get(attr)
    head = "data:image/png;base64,"
    uri = image.get(XLINK)
    assert uri.startswith(head)
    pixels = decode_png(base64.b64decode(uri[len(head) :]))
    assert len(pixels) == n_rows and all(len(row) == n_cols for row in pixels)
    for i in range(n_rows):
        for j in range(n_cols):
            assert pixels[i][j] == svg.ANGLE.rgb(values[i][j]), (i, j)
    assert pixels[3][1] == pixels[10][0] == (217, 217, 217)
    assert len(text) < 60_000  # not a rect per cell


def test_heatmap_rejects_ragged_grids():
    with pytest.raises(ValueError):
        svg.heatmap("t", ["0"], ["q", "k"], [[0.1]], svg.FRACTION, 0, 1, "f")
    with pytest.raises(ValueError):
        svg.heatmap("t", [], ["q"], [], svg.FRACTION, 0, 1, "f")


# --------------------------------------------------------------------------------------------
# the report plots (report/plots.py)
# --------------------------------------------------------------------------------------------


def _row(module, layer, uf, rc=1e-3, numel=4, sr=None, left=None, right=None):
    return {
        "name": f"model.layers.{layer}.{module}.weight",
        "module": module,
        "layer": layer,
        "numel": numel,
        "unchanged_fraction": uf,
        "relative_change": rc,
        "stable_rank": sr,
        "angle_left_max": left,
        "angle_right_max": right,
    }


def _files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_plot_diff_heat_maps_follow_the_rows(tmp_path):
    from paramgeom.report.plots import plot_diff

    rows = [
        _row("q", 0, 0.5, numel=2, left=2.0, right=4.0),
        _row("q", 0, 1.0, numel=2, left=4.0, right=6.0),  # q, layer 0: 0.75 and 4 degrees
        _row("k", 0, 0.0, left=0.0, right=0.0),
        _row("q", 1, 1.0, left=8.0, right=8.0),
        _row("norm", 0, 0.25),  # no angles: no norm column in the angle map
        _row("norm", 1, math.nan),
        _row("k", None, 0.3),  # outside the layers: not in the maps
    ]
    paths = plot_diff(rows, tmp_path)
    assert [p.name for p in paths][:2] == ["heatmap_unchanged.svg", "heatmap_angle.svg"]
    root = ET.parse(paths[0]).getroot()
    fr = svg.FRACTION.anchors
    cells = [r.get("fill") for r in group(root, "cells").iter(NS + "rect")]
    # layers 0, 1 x modules q, k, norm; (1, k) has no row, (1, norm) is NaN
    assert cells == [fr[3], fr[0], fr[1], fr[4], svg.GREY, svg.GREY]
    assert texts(group(root, "cell-labels")) == ["0.75", "0.00", "0.25", "1.00"]
    assert texts(group(root, "xticks")) == ["q", "k", "norm"]
    assert texts(group(root, "yticks")) == ["0", "1"]
    assert group(root, "title").text == "Unchanged fraction (bf16 rule) by layer and module"
    assert group(root, "xlabel").text == "module" and group(root, "ylabel").text == "layer"
    assert texts(group(root, "colorbar"))[-1] == "unchanged fraction"

    root = ET.parse(paths[1]).getroot()
    an = svg.ANGLE.anchors
    cells = [r.get("fill") for r in group(root, "cells").iter(NS + "rect")]
    assert cells == [an[2], an[0], an[4], svg.GREY]  # 4 of 8 degrees, 0, 8, none
    assert texts(group(root, "cell-labels")) == ["4", "0", "8"]
    assert texts(group(root, "xticks")) == ["q", "k"]
    assert texts(group(root, "colorbar"))[-1] == "degrees"


def test_plot_diff_histograms_count_like_numpy(tmp_path):
    np = pytest.importorskip("numpy")
    from paramgeom.report.plots import plot_diff

    rng = np.random.default_rng(7)
    sr = rng.gamma(2.0, 5.0, size=300).tolist()
    rows = [_row("q", i % 4, 0.5, sr=v) for i, v in enumerate(sr)]
    rows += [_row("q", 0, 0.5, sr=math.nan), _row("q", 0, 0.5, sr=math.inf)]  # left out
    (path,) = [p for p in plot_diff(rows, tmp_path) if p.name == "stable_rank_hist.svg"]
    root = ET.parse(path).getroot()
    assert group(root, "title").text == "Stable rank of the update (300 matrices)"
    frame = group(root, "frame")
    top, height = float(frame.get("y")), float(frame.get("height"))
    bars = list(group(root, "data").iter(NS + "rect"))
    want, edges = np.histogram(sr, bins=18)  # ceil(sqrt(300)) bins
    tallest = max(float(b.get("height")) for b in bars)
    per_count = tallest / want.max()
    assert per_count == pytest.approx(height / (want.max() * 1.05), rel=1e-3)
    got = [round(float(b.get("height")) / per_count) for b in bars]
    assert got == [int(c) for c in want if c]
    # bars stand on the zero line, and the first starts at the smallest value
    assert all(
        float(b.get("y")) + float(b.get("height")) == pytest.approx(top + height, abs=0.02)
        for b in bars
    )
    xs = [float(b.get("x")) for b in bars]
    assert xs == sorted(xs)


def test_unchanged_vs_update_has_a_log_x_axis(tmp_path):
    from paramgeom.report.plots import plot_diff

    rows = [
        _row("q", 0, 0.0, rc=1e-3),
        _row(HOSTILE, 1, 1.0, rc=1e-1),
        _row("k", 1, 0.5, rc=0.0),  # no update: no place on a log axis
        _row("k", 1, None, rc=1e-2),  # unknown fraction
    ]
    paths = plot_diff(rows, tmp_path)
    assert [p.name for p in paths] == ["heatmap_unchanged.svg", "unchanged_vs_update.svg"]
    root = ET.parse(paths[1]).getroot()
    frame = group(root, "frame")
    left, width = float(frame.get("x")), float(frame.get("width"))
    top, height = float(frame.get("y")), float(frame.get("height"))
    # x: log10 of [1e-3, 1e-1] padded by 5% of its 2 decades on each side
    x_of = {v: left + (math.log10(v) + 3.1) / 2.2 * width for v in (1e-3, 1e-2, 1e-1)}
    at = {t.text: float(t.get("x")) for t in group(root, "xticks").iter(NS + "text")}
    assert at == pytest.approx(
        {"10⁻³": x_of[1e-3], "10⁻²": x_of[1e-2], "10⁻¹": x_of[1e-1]}, abs=0.01
    )
    y_of = {v: top + (1 - (v + 0.02) / 1.04) * height for v in (0.0, 1.0)}
    paths_ = list(group(root, "data").iter(NS + "path"))
    assert len(paths_) == 2  # one per module with points: q, then the hostile one
    want = [[x_of[1e-3], y_of[0.0]], [x_of[1e-1], y_of[1.0]]]
    for p, w in zip(paths_, want, strict=True):
        assert _dots(p) == pytest.approx(w, abs=0.06)
    legend = group(root, "legend")
    assert texts(legend) == ["q", HOSTILE]
    assert "<script>" not in paths[1].read_text(encoding="utf-8")


def _summary():
    steps = [100, 200, 300, 400]
    mean = {
        "sim_k_mean": [0.2, 0.6, 0.95, 1.0],
        "stable_rank_mean": [30.0, 20.0, 12.0, 8.0],
        "frobenius_delta": [0.01, 0.1, 1.0, 10.0],
        "hill_alpha_mean": [2.0, 2.5, 3.0, 3.5],
    }

    def table(scale):
        return [{"step": t, **{k: v[i] * scale for k, v in mean.items()}} for i, t in
                enumerate(steps)]  # fmt: skip

    return {
        "steps": table(1.0),
        "steps_by_module": {"q": table(0.9), HOSTILE: table(1.0)},
        "lock": {"lock_step": 300},
        "k": 16,
        "lock_threshold": 0.9,
    }


def test_plot_trajectory_lines_and_reference_lines(tmp_path):
    from paramgeom.report.plots import plot_trajectory

    paths = plot_trajectory([], _summary(), tmp_path)
    names = ["sim_k.svg", "stable_rank.svg", "update_norm.svg", "hill_alpha.svg"]
    assert [p.name for p in paths] == names
    root = ET.parse(paths[0]).getroot()
    assert group(root, "title").text == "Sim_K, K = 16"
    assert texts(group(root, "legend")) == [
        "q", HOSTILE, "mean, all matrices", "threshold 0.9", "lock step 300",
    ]  # fmt: skip
    frame = group(root, "frame")
    left, width = float(frame.get("x")), float(frame.get("width"))
    top, height = float(frame.get("y")), float(frame.get("height"))
    y_of = lambda v: top + (1 - (v + 0.02) / 1.07) * height  # noqa: E731  ylim -0.02..1.05
    x_of = lambda t: left + (t - 85.0) / 330.0 * width  # noqa: E731  steps 100..400 padded 5%
    data = group(root, "data")
    threshold, lock = list(data.iter(NS + "line"))
    assert threshold.get("stroke-dasharray") == "6 4"
    assert float(threshold.get("y1")) == pytest.approx(y_of(0.9), abs=0.01)
    assert float(lock.get("x1")) == pytest.approx(x_of(300), abs=0.01)
    mean_line = list(data.iter(NS + "polyline"))[-1]
    pts = [float(v) for p in mean_line.get("points").split() for v in p.split(",")]
    want = [c for t, v in zip([100, 200, 300, 400], [0.2, 0.6, 0.95, 1.0], strict=True)
            for c in (x_of(t), y_of(v))]  # fmt: skip
    assert pts == pytest.approx(want, abs=0.01)
    # the K line is inside the stable rank plot's y range
    root = ET.parse(paths[1]).getroot()
    assert "K = 16" in texts(group(root, "legend"))
    # ||dW_t||_F over four decades: a log y axis, no legend
    root = ET.parse(paths[2]).getroot()
    assert texts(group(root, "yticks")) == ["10⁻²", "10⁻¹", "10⁰", "10¹"]
    assert not [el for el in root.iter() if el.get("class") == "legend"]


def test_plots_are_byte_identical_across_calls(tmp_path):
    from paramgeom.report.plots import plot_diff, plot_trajectory

    rows = [
        _row(m, i, (i * 7 % 10) / 10, rc=10 ** -(1 + i % 3), sr=1.0 + i, left=i / 3, right=i / 2)
        for i in range(12)
        for m in ("q", "v")
    ]
    for out in ("a", "b"):
        plot_diff(rows, tmp_path / out)
        plot_trajectory([], _summary(), tmp_path / out)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 9 and a == b
    assert all(name.endswith(".svg") for name in a)  # nothing else left behind


def test_plots_of_absent_data_write_nothing(tmp_path):
    from paramgeom.report.plots import plot_diff, plot_trajectory

    assert plot_diff([], tmp_path / "a") == []
    nothing = [{"name": "x", "module": "q", "layer": 0}, _row("q", 1, math.nan, rc=math.nan)]
    assert plot_diff(nothing, tmp_path / "a") == []
    assert plot_trajectory([], {}, tmp_path / "b") == []
    only_norm = {"steps": [{"step": 1, "frobenius_delta": 2.0}], "steps_by_module": {}}
    assert [p.name for p in plot_trajectory([], only_norm, tmp_path / "c")] == ["update_norm.svg"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_plot_diff_of_many_layers_embeds_one_png(tmp_path):
    from paramgeom.report.plots import plot_diff

    rows = [_row(m, layer, (layer % 11) / 10, left=1.0, right=1.0)
            for layer in range(1200) for m in ("q", "k", "v", "o")]  # fmt: skip
    path = plot_diff(rows, tmp_path)[0]
    root = ET.parse(path).getroot()
    (image,) = root.iter(NS + "image")
    pixels = decode_png(base64.b64decode(image.get(XLINK).split(",", 1)[1]))
    assert len(pixels) == 1200 and len(pixels[0]) == 4
    for layer in (0, 5, 10, 1199):
        want = svg.FRACTION.rgb((layer % 11) / 10)
        assert pixels[layer] == [want] * 4
    assert path.stat().st_size < 60_000


EXTREMES = [0.0, 5e-324, 1e-300, 1e300, 1.7e308, -1.7e308, math.inf, -math.inf, math.nan]


def test_plots_of_extreme_values_are_written_not_raised(tmp_path):
    """Values at float's range (a hostile or degenerate checkpoint: a zero base matrix, an
    overflowing norm) in every plotted column: every plot is still written and parses;
    values beyond 1e300 are left out like NaNs (a span of 1.7e308 overflowed the axis)."""
    from paramgeom.report.plots import plot_diff, plot_trajectory

    rows = [_row("up", i, v, rc=v, sr=v, left=v, right=1.0) for i, v in enumerate(EXTREMES)]
    rows += [_row("q", i, 0.5, rc=1e-3, sr=3.0, left=2.0, right=1.0) for i in range(3)]
    paths = plot_diff(rows, tmp_path / "diff")
    assert {p.name for p in paths} == {
        "heatmap_unchanged.svg", "heatmap_angle.svg", "stable_rank_hist.svg",
        "angle_hist.svg", "unchanged_vs_update.svg",
    }  # fmt: skip
    for p in paths:
        parse(p.read_text(encoding="utf-8"))
    summary = _summary()
    for i, v in enumerate(EXTREMES[:4]):
        for key in ("sim_k_mean", "stable_rank_mean", "frobenius_delta", "hill_alpha_mean"):
            summary["steps"][i % 4][key] = v if i else 1.7e308
    paths = plot_trajectory([], summary, tmp_path / "traj")
    assert len(paths) == 4
    for p in paths:
        parse(p.read_text(encoding="utf-8"))
