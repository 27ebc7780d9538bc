"""Integrations of :class:`paramgeom.GeometryMonitor` with training frameworks.

* :mod:`paramgeom.integrations.hf`: ``GeometryCallback``, a ``transformers.TrainerCallback``.

Each integration imports its framework only when its module is imported, so
``import paramgeom`` (and this package) never needs one installed.
"""

# Empty on purpose: a star-import must not pull in a framework (import the submodule).
__all__: list[str] = []
