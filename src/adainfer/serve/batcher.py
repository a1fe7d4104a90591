"""Dynamic batching: a bounded queue, and the one thread that does all of the model's work.

The model is not safe to use from two threads at once (its executor records and replays layer
arguments), and a CPU gains nothing from running two passes side by side, so one worker thread
owns it. The event loop only queues work and awaits futures that the worker resolves with
`loop.call_soon_threadsafe`; it never runs the model, so it keeps accepting, validating and
refusing requests while a batch runs.

Two kinds of work share the queue, first come first served:
- classification rows (`ModelWorker.batch`): the worker takes up to `max_batch_size` rows, from
  as many requests as it takes, or what arrived within `max_wait` of the oldest one, and answers
  them with ONE call of `run_batch` (one batched early-exit walk, where every row leaves at its own
  exit layer). A request larger than the room left in a batch is split over several.
- calls (`ModelWorker.submit`): a function run alone, e.g. one generation.

The queue is bounded in rows (a call counts as one): a request that does not fit is refused at
once (`QueueFull`) rather than left to wait without bound. A request whose client went away is
dropped from the queue before its rows are run (`Ticket.cancel`, or a cancelled `batch` await).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Answer = TypeVar("Answer")
Result = TypeVar("Result")


class QueueFull(Exception):
    """No room for a request now (the queue holds `max_queue` rows, or the worker is shutting down)."""


class WorkerStopped(QueueFull):
    """The worker thread ended on an error it could not contain: no request can be answered any more."""


@dataclass(eq=False)
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Resolve the future from the worker thread, on its own loop; nobody may be waiting any more."""
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)
        except RuntimeError:  # the loop is closed: its request is gone
            pass


@dataclass(eq=False)
class _RowsJob(_Job):
    """A classification request: its rows are taken in order, possibly over several batches."""

    texts: Sequence[str] = ()
    answers: list[Any] = field(default_factory=list)
    taken: int = 0  # rows handed to a batch so far
    answered: int = 0
    checked: bool = False

    @property
    def queued_rows(self) -> int:
        return len(self.texts) - self.taken


@dataclass(eq=False)
class _CallJob(_Job):
    work: Callable[[threading.Event], Any] | None = None

    @property
    def queued_rows(self) -> int:
        return 1


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled: the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass
class Ticket(Generic[Result]):
    """A queued call: await `future` for its result; `cancel()` drops it from the queue, or tells a
    running call to stop (it is handed the same `threading.Event`)."""

    future: asyncio.Future
    cancelled: threading.Event

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(frozen=True)
class Slice:
    """Rows start..stop of one request, as they sit in one batch."""

    job: _RowsJob
    start: int
    stop: int


class ModelWorker(Generic[Answer]):
    """The queue and its worker thread.

    run_batch: answers a list of rows (raw inputs), one answer each, in order: one model pass.
    check_row: raises ValueError for a row the model cannot take (empty, over the context); run by
        the worker on every row of a request before any of them joins a batch, so that one bad
        input fails its own request only.
    max_wait: seconds a batch waits for more rows after its oldest row arrived.
    on_batch: told the number of rows of each batch run (for metrics).
    """

    def __init__(self, run_batch: Callable[[list[str]], list[Answer]], check_row: Callable[[str], None], *,
                 max_batch_size: int = 16, max_wait: float = 0.01, max_queue: int = 256,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError(f"max_batch_size and max_queue must be >= 1 and max_wait >= 0, got {max_batch_size}, "
                             f"{max_queue}, {max_wait}")
        self.run_batch = run_batch
        self.check_row = check_row
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_rows = 0
        self._closing = False
        self._running: list[_Job] = []  # the jobs the worker holds now (a call, or a batch's requests)
        self.failure: BaseException | None = None  # why the worker thread ended, if not by `close`
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="adainfer-model-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, finish everything queued or running, and stop the thread. Past
        `timeout` seconds, cancel what is left (a generation stops at its next token, queued
        requests are dropped) and wait one more `timeout` at most: a shutdown ends in bounded time
        (the thread is a daemon, so a pass that never returns cannot keep the process alive)."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        if not self._thread.is_alive():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._condition:
                for job in [*self._queue, *self._running]:
                    job.cancelled.set()
                    job.settle(error=QueueFull("the server is shutting down"))
                self._condition.notify_all()
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """True while the worker can answer: started, and not ended by an error."""
        return self._thread.is_alive() and self.failure is None

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def batch(self, texts: Sequence[str]) -> list[Answer]:
        """Answers for `texts`, in order, each row batched with whatever else is queued."""
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        job = _RowsJob(loop, loop.create_future(), texts=list(texts), answers=[None] * len(texts))
        self._enqueue(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled.set()
            raise

    def submit(self, work: Callable[[threading.Event], Result]) -> Ticket[Result]:
        """Queue `work(cancelled)` to run alone on the worker thread; it should stop soon once
        `cancelled` is set. Raises QueueFull at once when there is no room."""
        loop = asyncio.get_running_loop()
        job = _CallJob(loop, loop.create_future(), work=work)
        self._enqueue(job)
        return Ticket(job.future, job.cancelled)

    def _enqueue(self, job: _Job) -> None:
        rows = job.queued_rows
        if rows > self.max_queue:
            raise ValueError(f"a request may hold at most {self.max_queue} inputs (the queue's size), got {rows}")
        with self._condition:
            if self.failure is not None:
                raise WorkerStopped(f"the model worker stopped ({type(self.failure).__name__}: {self.failure})")
            if self._closing:
                raise QueueFull("the server is shutting down")
            if self._queued_rows + rows > self.max_queue:
                raise QueueFull(f"the queue is full ({self._queued_rows} of {self.max_queue} rows waiting)")
            self._queue.append(job)
            self._queued_rows += rows
            self._condition.notify_all()

    def _serve(self) -> None:
        """The worker's loop. Each request's failure is its own (`_run_call`, `_run_rows`); an error
        outside them ends the loop, failing every request held or queued, so none waits forever,
        and marks the worker failed (`alive` is False, new requests are refused)."""
        try:
            while True:
                work = self._next_work()
                if work is None:
                    return
                self._running = [work] if isinstance(work, _CallJob) else list({piece.job: None for piece in work})
                if isinstance(work, _CallJob):
                    self._run_call(work)
                else:
                    self._run_rows(work)
                self._running = []
        except BaseException as error:
            with self._condition:
                self.failure = error
                for job in [*self._running, *self._queue]:
                    job.cancelled.set()
                    job.settle(error=WorkerStopped(f"the model worker stopped ({type(error).__name__}: {error})"))
                self._queue.clear()
                self._queued_rows = 0
            raise

    def _next_work(self) -> _CallJob | list[Slice] | None:
        """The next call, or the next batch of rows; None once closed with nothing left."""
        with self._condition:
            while True:
                self._drop_cancelled()
                if self._queue:
                    break
                if self._closing:
                    return None
                self._condition.wait()
            head = self._queue[0]
            if isinstance(head, _CallJob):
                self._queue.popleft()
                self._queued_rows -= 1
                return head
            return self._gather(deadline=head.enqueued + self.max_wait)

    def _gather(self, deadline: float) -> list[Slice]:
        """Take rows from the head of the queue until the batch is full, a call is next, or the
        deadline passes (held under the condition's lock; waiting releases it)."""
        slices: list[Slice] = []
        rows = 0
        while True:
            self._drop_cancelled()
            while rows < self.max_batch_size and self._queue and isinstance(self._queue[0], _RowsJob):
                job = self._queue[0]
                take = min(self.max_batch_size - rows, job.queued_rows)
                slices.append(Slice(job, job.taken, job.taken + take))
                job.taken += take
                rows += take
                self._queued_rows -= take
                if job.queued_rows == 0:
                    self._queue.popleft()
            call_next = bool(self._queue) and isinstance(self._queue[0], _CallJob)
            remaining = deadline - time.monotonic()
            if rows >= self.max_batch_size or call_next or self._closing or remaining <= 0:
                return slices
            self._condition.wait(remaining)

    def _drop_cancelled(self) -> None:
        for job in [job for job in self._queue if job.cancelled.is_set()]:
            self._queue.remove(job)
            self._queued_rows -= job.queued_rows
            if isinstance(job, _RowsJob):
                job.taken = len(job.texts)

    def _run_call(self, job: _CallJob) -> None:
        try:
            job.settle(result=job.work(job.cancelled))
        except Exception as error:  # the request fails, the worker goes on
            job.settle(error=error)

    def _run_rows(self, slices: list[Slice]) -> None:
        slices = [piece for piece in slices if self._checked(piece.job)]
        if not slices:
            return
        texts = [text for piece in slices for text in piece.job.texts[piece.start:piece.stop]]
        try:
            answers = self.run_batch(texts)
            if len(answers) != len(texts):
                raise RuntimeError(f"a batch of {len(texts)} rows got {len(answers)} answers")
        except Exception as error:  # every request of the batch fails, the worker goes on
            for job in {piece.job for piece in slices}:
                self._fail(job, error)
            return
        if self.on_batch is not None:
            self.on_batch(len(texts))
        offset = 0
        for piece in slices:
            count = piece.stop - piece.start
            piece.job.answers[piece.start:piece.stop] = answers[offset:offset + count]
            piece.job.answered += count
            offset += count
            if piece.job.answered == len(piece.job.texts):
                piece.job.settle(result=piece.job.answers)

    def _checked(self, job: _RowsJob) -> bool:
        """Check a request's rows the first time any of them is taken; False if it failed or is cancelled."""
        if job.cancelled.is_set():
            return False
        if job.checked:
            return True
        for index, text in enumerate(job.texts):
            try:
                self.check_row(text)
            except ValueError as error:
                self._fail(job, ValueError(f"input {index}: {error}"))
                return False
            except Exception as error:  # a check that crashed (not a refusal): this request fails with it
                self._fail(job, error)
                return False
        job.checked = True
        return True

    def _fail(self, job: _RowsJob, error: BaseException) -> None:
        job.cancelled.set()  # its rows still queued are dropped
        job.settle(error=error)
