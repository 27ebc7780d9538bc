"""Outputs of ``paramgeom diff`` and ``paramgeom trajectory`` (DESIGN.md "Checkpoints", Outputs).

- :mod:`~paramgeom.report.tables`: the per-tensor table as Parquet and CSV, and the JSON
  summary; atomic, sorted, byte-reproducible.
- :mod:`~paramgeom.report.aggregate`: model, module, layer and expert-stack figures of a diff;
  per-step figures and the subspace-locking step of a trajectory (DESIGN "Metrics").
- :mod:`~paramgeom.report.plots`: SVG heat maps, histograms and curves.
- :mod:`~paramgeom.report.svg`: the SVG drawing they use (standard library only).
- :mod:`~paramgeom.report.render`: ``report.md`` and a self-contained ``report.html``.

pyarrow is imported only by the functions that need it; the plots need no third-party package.
"""

from paramgeom.report.aggregate import lock_step, summarize_diff, summarize_trajectory
from paramgeom.report.plots import plot_diff, plot_trajectory
from paramgeom.report.render import write_diff_report, write_trajectory_report
from paramgeom.report.tables import read_csv, read_table, write_json, write_table

__all__ = [
    "lock_step",
    "plot_diff",
    "plot_trajectory",
    "read_csv",
    "read_table",
    "summarize_diff",
    "summarize_trajectory",
    "write_diff_report",
    "write_json",
    "write_table",
    "write_trajectory_report",
]
