"""Progress bar in bytes for long streaming work (rich, on stderr)."""

from __future__ import annotations

__all__ = ["ByteProgress"]


class ByteProgress:
    """``with ByteProgress("diff", total_bytes, quiet) as bar: bar.advance(n)``: bytes done,
    bytes/s and ETA on stderr; nothing at all when ``quiet`` (rich is then not imported:
    0.2 s of a small run's start-up)."""

    def __init__(self, title: str, total: int, quiet: bool = False) -> None:
        self.title = title
        self._progress = None
        if quiet:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.fields[title]}[/] {task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task("", total=max(total, 1), title=title)

    def describe(self, text: str) -> None:
        if self._progress is None:
            return
        if len(text) > 48:
            text = "..." + text[-45:]
        self._progress.update(self._task, description=text)

    def advance(self, nbytes: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, nbytes)

    def __enter__(self) -> ByteProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is None:
            return
        self.describe("done" if exc[0] is None else "stopped")
        self._progress.stop()
