"""Timing and reporting helpers of the benchmark scripts: the ones ``paramgeom bench``
uses (``paramgeom.bench``), so both report figures the same way."""

from paramgeom.bench import machine, once, quantile, time_interleaved

__all__ = ["machine", "once", "quantile", "time_interleaved"]
