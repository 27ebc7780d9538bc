"""Lazy access to the compiled extensions; a missing one is a reason, never an ImportError."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType


@functools.cache
def load(name: str) -> tuple[ModuleType | None, str]:
    """Import ``paramgeom.<name>`` (``_C`` or ``_C_cuda``): (module, "") or (None, why not)."""
    try:
        return importlib.import_module(f"paramgeom.{name}"), ""
    except ImportError as exc:
        if getattr(exc, "name", None) == f"paramgeom.{name}":
            return None, "not compiled (this build of paramgeom has no native extension)"
        return None, f"failed to load: {exc}"
