"""A spy on the float32 windows the exact path solves, for the tests of which windows a
spectrum takes (``paramgeom.linalg.eigen.passing_window``)."""

from __future__ import annotations

import importlib

from paramgeom.linalg import eigen


def window_widths(monkeypatch) -> list[int]:
    """The width of every float32 window ``top_window`` solves from now on (in
    ``top_eigenpairs`` and in ``exact_svd``), in order."""
    rs = importlib.import_module("paramgeom.linalg.randomized_svd")
    widths: list[int] = []
    real = eigen.top_window

    def spy(g, width, **kw):
        widths.append(width)
        return real(g, width, **kw)

    monkeypatch.setattr(eigen, "top_window", spy)
    monkeypatch.setattr(rs, "top_window", spy)
    return widths
