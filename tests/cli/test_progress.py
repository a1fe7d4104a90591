"""Progress in a log: plain lines with rate and time left when stderr is not a terminal."""

import io

from rich.console import Console
from rich.progress import Progress

from adainfer.cli.progress import LineProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines_of(interval: float = 10.0):
    stream = io.StringIO()
    clock = Clock()
    return LineProgress(Console(file=stream, width=200), interval=interval, clock=clock), clock, stream


def test_a_terminal_gets_the_bar_and_a_log_gets_lines():
    assert isinstance(progress_bar(Console(file=io.StringIO(), force_terminal=True)), Progress)
    assert isinstance(progress_bar(Console(file=io.StringIO(), force_terminal=False)), LineProgress)


def test_lines_at_start_every_interval_and_once_when_done_with_rate_and_eta():
    progress, clock, stream = lines_of(interval=10)
    task = progress.add_task("predicting", total=100)
    progress.advance(task, 0)
    for _ in range(10):  # 10 items a second: 5 per call, a call every half second
        clock.now += 0.5
        progress.advance(task, 5)
    for _ in range(10):
        clock.now += 0.5
        progress.advance(task, 5)
    progress.advance(task, 0)  # already done: said once
    assert stream.getvalue().splitlines() == [
        "predicting: 0/100 (0 %)",
        "predicting: 100/100 (100 %), 10.00/s, done in 10s",
    ]


def test_a_line_every_interval_while_it_runs():
    progress, clock, stream = lines_of(interval=2)
    task = progress.add_task("collecting", total=40)
    for _ in range(8):
        clock.now += 1
        progress.advance(task)
    assert stream.getvalue().splitlines() == [
        "collecting: 1/40 (2 %), 1.00/s, ETA 39s",
        "collecting: 3/40 (8 %), 1.00/s, ETA 37s",
        "collecting: 5/40 (12 %), 1.00/s, ETA 35s",
        "collecting: 7/40 (18 %), 1.00/s, ETA 33s",
    ]


def test_a_resumed_stage_rates_only_the_new_work_and_a_new_stage_starts_a_new_line():
    progress, clock, stream = lines_of(interval=60)
    task = progress.add_task("", total=None)
    progress.update(task, description="traces: train", completed=300, total=400)  # 300 cached
    clock.now += 50
    progress.update(task, description="traces: train", completed=400, total=400)
    progress.update(task, description="timing: batch 1", completed=0, total=64)
    assert stream.getvalue().splitlines() == [
        "traces: train: 300/400 (75 %)",
        "traces: train: 400/400 (100 %), 2.00/s, done in 50s",
        "timing: batch 1: 0/64 (0 %)",
    ]
