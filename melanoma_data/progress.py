"""Progress bars: the one place the toolkit draws them (images in ``preprocess``, folds in ``fit``), or none."""

from __future__ import annotations

from typing import Any


class Bar:
    """One bar of :class:`Bars` (a no-op when the bars are hidden)."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, note: str | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **({"note": note} if note is not None else {}))

    def update(self, completed: int, total: int | None = None, note: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, total=total, note=note)

    def close(self) -> None:
        """Remove the bar, so an early-stopped count (``196/2000``) does not stay on screen."""
        if self._progress is not None:
            self._progress.remove_task(self._task)
            self._progress = None


class Bars:
    """A context holding rich progress bars, or nothing when ``show`` is False.

    ``unit`` (e.g. ``"img"``) adds a rate column and the time remaining.
    """

    def __init__(self, show: bool, console: Any = None, unit: str | None = None) -> None:
        self.show, self.console, self.unit = show, console, unit
        self._progress: Any = None

    def __enter__(self) -> Bars:
        if self.show:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                ProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.text import Text

            unit = self.unit

            class Rate(ProgressColumn):
                def render(self, task):  # noqa: D102
                    return Text(f"{task.speed or 0:.1f} {unit}/s")

            timing = [Rate(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()] if unit else \
                [TimeElapsedColumn()]
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      *timing, TextColumn("{task.fields[note]}"), console=self.console)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def add(self, description: str, total: int | None = None, completed: int = 0) -> Bar:
        """A new bar (``total=None``: unknown until the first update)."""
        if self._progress is None:
            return Bar()
        return Bar(self._progress, self._progress.add_task(description, total=total, completed=completed, note=""))
