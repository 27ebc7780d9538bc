"""The drivers' bad-input error.

DESIGN.md "Command line": bad input gets exit status 2 and a one-line message, never a
traceback. Everything that the user can fix (a missing teacher folder, a folder that is not
a causal LM, tokenizers that differ, a bad flag combination) raises :class:`DriverError`;
``paramgeom.drivers.cli`` turns it into that line.
"""

from __future__ import annotations

__all__ = ["DriverError"]


class DriverError(ValueError):
    """Bad input to a driver; the message is one line that names the file or flag."""
