"""Progress for long verbs: a rich bar on a terminal, plain timestamped lines in a log.

rich draws nothing while its console is not a terminal, so a 7-minute `fit` piped to a file was
silent until it ended. `progress_bar()` gives the bar on a terminal and, elsewhere, a
`LineProgress` with the same three methods the verbs call (`add_task`, `update`, `advance`) that
writes a line when a stage starts, every `interval` seconds while it runs, and when it is done,
with its rate and the time it has left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

DEFAULT_INTERVAL_S = 10.0


@dataclass
class _Stage:
    """One task's state: its description, counts, and where its rate is measured from."""

    description: str
    total: float | None
    completed: float = 0.0
    started_at: float = 0.0
    completed_at_start: float = 0.0  # a resumed run starts part done: its rate counts only new work
    printed_at: float | None = None
    done_printed: bool = False

    @property
    def done(self) -> bool:
        return self.total is not None and self.completed >= self.total


class LineProgress(AbstractContextManager["LineProgress"]):
    """`Progress`'s `add_task`/`update`/`advance`, written as one plain line per report."""

    def __init__(self, console: Console, interval: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.interval, self.clock = console, interval, clock
        self.stages: list[_Stage] = []

    def __exit__(self, *exc_info: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> int:
        self.stages.append(_Stage(description, total, started_at=self.clock()))
        return len(self.stages) - 1

    def update(self, task_id: int, *, description: str | None = None, completed: float | None = None,
               total: float | None = None) -> None:
        stage = self.stages[task_id]
        if total is not None:
            stage.total = total
        if completed is not None:
            stage.completed = completed
        if description is not None and description != stage.description:  # a new stage starts here
            stage.description, stage.started_at, stage.completed_at_start = description, self.clock(), stage.completed
            stage.printed_at, stage.done_printed = None, False
        self._report(stage)

    def advance(self, task_id: int, advance: float = 1) -> None:
        stage = self.stages[task_id]
        stage.completed += advance
        self._report(stage)

    def _report(self, stage: _Stage) -> None:
        """A line when a stage starts, every `interval` seconds, and once when it is done."""
        now = self.clock()
        due = stage.printed_at is None or now - stage.printed_at >= self.interval
        if stage.done_printed or not (due or stage.done):
            return
        stage.printed_at, stage.done_printed = now, stage.done
        self.console.print(progress_line(stage, now), highlight=False, soft_wrap=True, markup=False)


def progress_line(stage: _Stage, now: float) -> str:
    """`stage: done/total (pct), rate/s, ETA` in plain words, for a log."""
    elapsed = now - stage.started_at
    count = f"{stage.completed:g}" if stage.total is None else f"{stage.completed:g}/{stage.total:g}"
    line = f"{stage.description or 'working'}: {count}"
    if stage.total:
        line += f" ({100 * stage.completed / stage.total:.0f} %)"
    rate = (stage.completed - stage.completed_at_start) / elapsed if elapsed > 0 else 0.0
    if rate > 0:
        line += f", {rate:.2f}/s"
        if not stage.done and stage.total is not None:
            line += f", ETA {_duration((stage.total - stage.completed) / rate)}"
    if stage.done:
        line += f", done in {_duration(elapsed)}"
    return line


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def progress_bar(console: Console, *, transient: bool = False) -> Progress | LineProgress:
    """A rich bar (description, bar, done/total, elapsed) on a terminal; `LineProgress` otherwise."""
    if console.is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        return Progress(*columns, console=console, transient=transient)
    return LineProgress(console)
