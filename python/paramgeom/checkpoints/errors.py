"""The one exception type for bad checkpoint input (DESIGN.md "Reliability contract")."""

from __future__ import annotations

from pathlib import Path


class CheckpointError(Exception):
    """Bad input: a one-line message naming the file and, when known, the tensor.

    The command line turns it into exit status 2 and prints ``str(exc)``, never a traceback.
    """

    def __init__(self, path: str | Path | None, tensor: str | None, message: str) -> None:
        self.path = str(path) if path is not None else None
        self.tensor = tensor
        self.message = " ".join(str(message).split())  # always one line
        where = ": ".join(p for p in (self.path, f"tensor {tensor!r}" if tensor else None) if p)
        super().__init__(f"{where}: {self.message}" if where else self.message)
