"""The streaming checkpoint engine behind ``paramgeom diff`` and ``paramgeom trajectory``.

checkpoints (readers, pairing) -> engine (plan, prefetch, compute through the public API,
journal, ranks) -> report (tables, summary, plots, Markdown/HTML).
"""
