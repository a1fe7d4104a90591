"""`ModelWorker` on a fake model: how rows are batched, split, refused, dropped and drained."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from adainfer.serve.batcher import ModelWorker, QueueFull


class FakeModel:
    """Answers `text!` per row and records every batch; `hold()` keeps the worker inside a batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.events: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.inside = threading.Event()

    def run_batch(self, texts: list[str]) -> list[str]:
        self.inside.set()
        self.gate.wait()
        self.batches.append(list(texts))
        self.events.append(f"batch {','.join(texts)}")
        if "boom" in texts:
            raise RuntimeError("the model failed")
        return [f"{text}!" for text in texts]

    @staticmethod
    def check_row(text: str) -> None:
        if text == "bad":
            raise ValueError("a bad row")

    def hold(self) -> None:
        self.gate.clear()
        self.inside.clear()


def worker(fake: FakeModel, **options) -> ModelWorker:
    settings = {"max_batch_size": 4, "max_wait": 0.2, "max_queue": 64} | options
    started = ModelWorker(fake.run_batch, fake.check_row, **settings)
    started.start()
    return started


async def inside(fake: FakeModel) -> None:
    await asyncio.get_running_loop().run_in_executor(None, fake.inside.wait)


def test_concurrent_requests_share_batches_up_to_the_size_and_each_gets_its_own_answers():
    fake = FakeModel()
    pool = worker(fake)

    async def main():
        return await asyncio.gather(*(pool.batch([f"r{i}a", f"r{i}b"]) for i in range(5)))

    answers = asyncio.run(main())
    pool.close()
    assert answers == [[f"r{i}a!", f"r{i}b!"] for i in range(5)]
    assert [len(batch) for batch in fake.batches] == [4, 4, 2]


def test_a_request_larger_than_a_batch_is_split_and_answered_in_order():
    fake = FakeModel()
    pool = worker(fake)
    texts = [f"t{i}" for i in range(10)]
    assert asyncio.run(pool.batch(texts)) == [f"{text}!" for text in texts]
    pool.close()
    assert fake.batches == [texts[:4], texts[4:8], texts[8:]]


def test_rows_arriving_within_max_wait_join_the_batch_and_a_lone_row_waits_no_longer():
    fake = FakeModel()
    pool = worker(fake, max_wait=0.5)

    async def two_apart():
        first = asyncio.ensure_future(pool.batch(["a"]))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(pool.batch(["b"]))
        return await first, await second

    assert asyncio.run(two_apart()) == (["a!"], ["b!"])
    assert fake.batches == [["a", "b"]]
    started = time.monotonic()
    assert asyncio.run(pool.batch(["c"])) == ["c!"]
    waited = time.monotonic() - started
    pool.close()
    assert 0.4 < waited < 3.0  # the deadline, not the next arrival, ended the wait


def test_a_bad_row_fails_its_own_request_only_and_never_reaches_the_model():
    fake = FakeModel()
    pool = worker(fake)

    async def main():
        return await asyncio.gather(pool.batch(["a", "bad"]), pool.batch(["c"]), return_exceptions=True)

    bad, good = asyncio.run(main())
    pool.close()
    assert isinstance(bad, ValueError) and "input 1: a bad row" in str(bad)
    assert good == ["c!"]
    assert fake.batches == [["c"]]


def test_a_full_queue_refuses_at_once_and_a_request_larger_than_the_queue_is_an_error():
    fake = FakeModel()
    pool = worker(fake, max_queue=3, max_batch_size=1, max_wait=0.0)

    async def main():
        fake.hold()
        running = asyncio.ensure_future(pool.batch(["held"]))
        await inside(fake)  # the worker is busy with it; the queue is empty again
        waiting = asyncio.ensure_future(pool.batch(["q1", "q2", "q3"]))
        await asyncio.sleep(0)
        assert pool.queued_rows == 3
        with pytest.raises(QueueFull, match="full"):
            await pool.batch(["one more"])
        with pytest.raises(ValueError, match="at most 3 inputs"):
            await pool.batch(["x"] * 4)
        fake.gate.set()
        return await running, await waiting

    assert asyncio.run(main()) == (["held!"], ["q1!", "q2!", "q3!"])
    pool.close()


def test_a_request_whose_client_went_away_is_dropped_before_it_runs():
    fake = FakeModel()
    pool = worker(fake, max_wait=0.0)

    async def main():
        fake.hold()
        running = asyncio.ensure_future(pool.batch(["held"]))
        await inside(fake)
        gone = asyncio.ensure_future(pool.batch(["gone1", "gone2"]))
        await asyncio.sleep(0)
        gone.cancel()
        kept = asyncio.ensure_future(pool.batch(["kept"]))
        await asyncio.sleep(0)
        fake.gate.set()
        return await running, await kept

    assert asyncio.run(main()) == (["held!"], ["kept!"])
    pool.close()
    assert fake.batches == [["held"], ["kept"]] and pool.queued_rows == 0


def test_calls_run_alone_in_arrival_order_between_batches():
    fake = FakeModel()
    pool = worker(fake, max_wait=0.0)

    def call(cancelled: threading.Event) -> str:
        fake.events.append("call")
        return "called"

    async def main():
        fake.hold()
        first = asyncio.ensure_future(pool.batch(["held"]))
        await inside(fake)
        before = asyncio.ensure_future(pool.batch(["r1"]))
        await asyncio.sleep(0)
        ticket = pool.submit(call)
        after = asyncio.ensure_future(pool.batch(["r2"]))
        await asyncio.sleep(0)
        fake.gate.set()
        return await first, await before, await ticket.future, await after

    assert asyncio.run(main()) == (["held!"], ["r1!"], "called", ["r2!"])
    pool.close()
    assert fake.events == ["batch held", "batch r1", "call", "batch r2"]


def test_a_failed_batch_fails_its_requests_and_the_worker_goes_on():
    fake = FakeModel()
    pool = worker(fake)

    async def main():
        failed = await asyncio.gather(pool.batch(["boom"]), pool.batch(["with it"]), return_exceptions=True)
        return failed, await pool.batch(["later"])

    failed, later = asyncio.run(main())
    pool.close()
    assert all(isinstance(error, RuntimeError) for error in failed) and later == ["later!"]


def test_close_finishes_everything_queued_then_refuses_new_work():
    fake = FakeModel()
    pool = worker(fake, max_wait=0.0, max_batch_size=1)

    async def main():
        fake.hold()
        queued = [asyncio.ensure_future(pool.batch([f"q{i}"])) for i in range(3)]
        await inside(fake)
        closing = asyncio.get_running_loop().run_in_executor(None, pool.close)
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="shutting down"):
            await pool.batch(["late"])
        fake.gate.set()
        await closing
        return [await future for future in queued]

    assert asyncio.run(main()) == [["q0!"], ["q1!"], ["q2!"]]


def test_the_event_loop_runs_while_the_worker_is_busy():
    fake = FakeModel()
    pool = worker(fake, max_wait=0.0)

    async def main():
        fake.hold()
        busy = asyncio.ensure_future(pool.batch(["slow"]))
        await inside(fake)
        ticks = 0
        for _ in range(20):  # the loop keeps running other work while the batch is held
            await asyncio.sleep(0.005)
            ticks += 1
        fake.gate.set()
        return ticks, await busy

    assert asyncio.run(main()) == (20, ["slow!"])
    pool.close()
