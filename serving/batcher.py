"""Dynamic batching: one worker coroutine takes queued requests, concatenates them along
dimension 0 up to `max_batch_size` rows (waiting at most `max_queue_delay_ms` for more while
requests are still arriving), runs the model in one thread (onnxruntime releases the GIL) and
splits the outputs back per request.

Shedding is on a queue-time budget (`queue_timeout_ms`): a request that, by the measured
batch times, cannot start within the budget is refused with 503 at once; one that still waits
longer (the estimate was low) gets a 503 from a timer, without waiting for the running batch.
A count bound (`max_queue_size`) is the backstop for models too fast to estimate."""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import ServingError
from .hooks import Predicts
from .metrics import Metrics
from .settings import Batching

RETRY_AFTER = [(b"retry-after", b"1")]


#: Seconds between two stderr lines about model failures (a caller can cause one a request).
FAILURE_LOG_SECONDS = 10.0
#: The most a batch waits for the clients of the batch before it to come back, as a share of
#: that batch's run time (and never longer than the queue delay). A closed-loop client sends
#: its next request a millisecond or two after its answer; without this wait, 8 such clients of
#: a model whose batch takes 40 ms split into two batches of 4 that take turns (each starts
#: with the requests that came during the other), and batches of 4 cost more an item than 8.
#: 5% of a 40 ms batch is 2 ms, enough for them; of a 3 ms batch, 0.15 ms: too short to cost.
RETURN_WAIT_SHARE = 0.05


def model_failure(e: Exception) -> ServingError:
    """The answer to a request the model failed on. onnxruntime's message names graph nodes
    and kernels (internals a caller should not see, and cannot act on): only its kind goes
    out; the operator gets the message on stderr (`Batcher._log_failure`)."""
    return ServingError(500, f"the model failed on this request's inputs ({type(e).__name__}); "
                             f"they passed validation, so check their values against the "
                             f"model's metadata", reason="model_error")


class _Item:
    __slots__ = ("feeds", "rows", "sig", "future", "t_enqueued", "timer", "counted", "gone")

    def __init__(self, feeds, rows, sig, future, t_enqueued, gone):
        self.feeds, self.rows, self.sig = feeds, rows, sig
        self.future, self.t_enqueued = future, t_enqueued
        self.timer: asyncio.TimerHandle | None = None  # set as it is queued
        self.counted = True        # still counted in Batcher.queued
        #: True once the client is gone (its connection closed), or None if not known
        self.gone: Callable[[], bool] | None = gone


class Arrival:
    """One request counted in `Batcher.arriving` until `done()` (idempotent; also usable as
    a done-callback). For a front end that learns of a request before its payload is read
    and cannot bracket both in one block (gRPC: the call is handed over, then its message)."""
    __slots__ = ("_batcher",)

    def __init__(self, batcher: Batcher) -> None:
        self._batcher: Batcher | None = batcher
        batcher.arriving += 1

    def done(self, *_) -> None:
        if self._batcher is not None:
            self._batcher.arriving -= 1
            self._batcher = None


class Batcher:
    def __init__(self, model: Predicts, batching: Batching, metrics: Metrics) -> None:
        self.model = model
        self.max_rows = max(1, batching.max_batch_size)
        self.batching = batching.enabled
        self.window = batching.max_queue_delay_ms / 1000.0
        self.max_queue_size = batching.max_queue_size
        self.timeout = batching.queue_timeout_ms / 1000.0
        self.metrics = metrics
        self.queue: deque[_Item] = deque()
        self.queued = 0            # live items in `queue` (expired ones are skipped lazily)
        self.arriving = 0          # requests being read/decoded that will probably be queued
        self.running = 0           # requests in the batch the model runs now
        self.queued_rows = 0       # rows of the live items in `queue`
        self.running_rows = 0      # rows of the batch the model runs now
        self.last_rows = 0         # rows of the last batch that ran
        self.last_seconds = 0.0    # its run time
        self.last_done = 0.0       # when its answers were handed out (loop time)
        self.rows_since = 0        # rows submitted since then
        #: smoothed seconds one batch of n rows takes, per n seen (warm-up, then live batches)
        self.batch_seconds: dict[int, float] = {}
        self._run_started = 0.0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None
        self.inline = False
        self._failure_logged_at = -FAILURE_LOG_SECONDS
        self._failures_unlogged = 0

    def prefer(self, rows: int, inline: bool = False,
               items_per_second: dict[int, float] | None = None) -> None:
        """Pack batches up to `rows` (a single bigger request still runs alone); with `inline`,
        run batches on the event loop (for models that take microseconds). The warm-up's
        `items_per_second` per batch size seed the wait estimate."""
        if self.batching:
            self.max_rows = max(1, min(rows, self.max_rows))
        self.inline = inline
        for n, rate in (items_per_second or {}).items():
            if rate > 0:
                self.batch_seconds[n] = n / rate

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._executor.shutdown(wait=True)

    async def run_blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- producer side --------------------------------------------------------------------
    @contextlib.contextmanager
    def expecting(self):
        """Count a request as on its way in (body being read or decoded) while the block runs:
        the worker waits for such requests, within the queue delay, to fill a batch."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def submit(self, feeds: dict[str, np.ndarray], rows: int, sig,
                     gone: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """Queue one request; return its outputs (rows of the batch's outputs). `gone` tells
        whether the client has gone away: such a request is dropped when its turn comes
        instead of being computed for nobody."""
        if self.queued >= self.max_queue_size:
            raise ServingError(503, f"server is overloaded: the queue holds {self.queued} "
                                    f"requests (max {self.max_queue_size}, "
                                    f"SERVEDMODEL_MAX_QUEUE_SIZE); retry later",
                               reason="queue_full", headers=RETRY_AFTER)
        wait = self.estimated_wait()
        if wait is not None and wait > self.timeout:
            raise ServingError(503, f"server is overloaded: this request would wait about "
                                    f"{wait * 1000:.0f} ms to start, over the queue-time budget "
                                    f"of {self.timeout * 1000:.0f} ms "
                                    f"(SERVEDMODEL_QUEUE_TIMEOUT_MS); retry later",
                               reason="queue_timeout", headers=RETRY_AFTER)
        loop = asyncio.get_running_loop()
        item = _Item(feeds, rows, sig, loop.create_future(), time.perf_counter(), gone)
        item.timer = loop.call_later(self.timeout, self._expire, item)
        self.queue.append(item)
        self.queued += 1
        self.queued_rows += rows
        self.rows_since += rows
        self._wakeup.set()
        return await item.future

    def _dequeue(self, item: _Item) -> None:
        """The item leaves the queue (to run, or dropped): no timeout for it any more."""
        assert item.timer is not None   # queued items have one
        item.timer.cancel()
        self._uncount(item)

    def _uncount(self, item: _Item) -> None:
        if item.counted:
            item.counted = False
            self.queued -= 1
            self.queued_rows -= item.rows

    def batch_time(self, rows: int) -> float | None:
        """Estimated seconds for one batch of `rows`: interpolated between the batch sizes
        measured so far (a batch never counted faster than the smallest measured one;
        proportional beyond the largest). None before anything was measured."""
        known = self.batch_seconds
        if not known:
            return None
        if rows in known:
            return known[rows]
        sizes = sorted(known)
        if rows <= sizes[0]:
            return known[sizes[0]]
        if rows >= sizes[-1]:
            return known[sizes[-1]] * rows / sizes[-1]
        hi = next(n for n in sizes if n > rows)
        lo = sizes[sizes.index(hi) - 1]
        return known[lo] + (known[hi] - known[lo]) * (rows - lo) / (hi - lo)

    def estimated_wait(self) -> float | None:
        """Seconds until a request queued now would start: what is left of the running batch,
        plus the queued rows ahead packed into batches of `max_rows`, at the measured batch
        times (per batch size: a model can take 7x less per row in a batch of 32 than alone).
        None before any batch ran."""
        full = self.batch_time(self.max_rows)
        if full is None:
            return None
        # (batch_time is None only before anything was measured, and `full` is known)
        left = 0.0
        if self.running_rows:
            running = self.batch_time(self.running_rows)
            assert running is not None
            left = max(0.0, running - (time.perf_counter() - self._run_started))
        batches, rest = divmod(self.queued_rows, self.max_rows)
        last = self.batch_time(rest) if rest else 0.0
        assert last is not None
        return left + batches * full + last

    def _expire(self, item: _Item) -> None:
        self._uncount(item)
        if not item.future.done():
            item.future.set_exception(ServingError(
                503, f"request waited in the queue longer than {self.timeout * 1000:.0f} ms; "
                     f"retry later", reason="queue_timeout", headers=RETRY_AFTER))

    # -- consumer side --------------------------------------------------------------------
    def _take(self, batch: list[_Item], rows: int) -> int:
        """Move queued items that fit (same non-batch shapes, rows left) into `batch`."""
        keep: deque[_Item] = deque()
        sig = batch[0].sig if batch else None
        while self.queue:
            item = self.queue.popleft()
            if item.future.done():          # expired or cancelled while queued
                self._dequeue(item)
                continue
            if item.gone is not None and item.gone():
                # Its client closed the connection while it waited (a client-side timeout, a
                # load generator that stopped): minutes of a saturated model's time, for nobody.
                self._dequeue(item)
                item.future.set_exception(ServingError(
                    400, "the client closed the connection before its request ran",
                    reason="abandoned"))
                continue
            if not batch:
                batch.append(item)
                sig, rows = item.sig, item.rows
                if not self.batching:
                    break
                continue
            if self.batching and item.sig == sig and rows + item.rows <= self.max_rows:
                batch.append(item)
                rows += item.rows
                if rows >= self.max_rows:
                    break
            else:
                keep.append(item)
        if keep:
            keep.extend(self.queue)
            self.queue = keep
        return rows

    async def _worker(self) -> None:
        while True:
            await self._run_next()

    async def _run_next(self) -> None:
        """Wait for work, collect one batch and run it. A method of its own so that the batch
        (its request bodies and outputs, up to hundreds of MB) is dropped when it returns, not
        kept by the worker's frame while the server waits, idle, for the next request."""
        loop = asyncio.get_running_loop()
        if not self.queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch: list[_Item] = []
        rows = self._take(batch, 0)
        if not batch:
            return
        if self.batching and rows < self.max_rows and self.window > 0:
            # Wait for more only while requests are still on their way in, then (briefly) for
            # the clients of the last batch.
            rows = await self._gather(batch, rows, loop.time() + self.window,
                                      lambda: self.arriving > 0)
            rows = await self._gather(batch, rows, self.return_wait_until(),
                                      lambda: self.rows_since < self.last_rows)
        for it in batch:
            if it.future.done():
                self._dequeue(it)
        batch = [it for it in batch if not it.future.done()]
        if not batch:
            return
        now = time.perf_counter()
        for it in batch:
            self._dequeue(it)
            self.metrics.queue_duration.observe(now - it.t_enqueued)
        await self._run(batch)

    async def _gather(self, batch: list[_Item], rows: int, until: float,
                      more: Callable[[], bool]) -> int:
        """Take newly queued requests into `batch` while `more()` and before `until` (loop
        time); the batch's rows."""
        loop = asyncio.get_running_loop()
        while rows < self.max_rows and more():
            left = until - loop.time()
            if left <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except TimeoutError:
                pass
            rows = self._take(batch, rows)
        return rows

    def return_wait_until(self) -> float:
        """Until when (loop time) a batch may wait for the clients of the last batch: while
        fewer rows than it had came since it ended (RETURN_WAIT_SHARE)."""
        if self.rows_since >= self.last_rows:
            return 0.0
        return self.last_done + min(self.window, RETURN_WAIT_SHARE * self.last_seconds)

    def _log_failure(self, e: Exception) -> None:
        """One stderr line per FAILURE_LOG_SECONDS at most: a caller who makes the model fail
        on every request must not flood the log (or block the loop on a full stderr pipe)."""
        self._failures_unlogged += 1
        now = time.monotonic()
        if now - self._failure_logged_at < FAILURE_LOG_SECONDS:
            return
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"serving: the model failed on a request ({self._failures_unlogged} since the "
              f"last line): {type(e).__name__}: {first[:500]}", file=sys.stderr, flush=True)
        self._failure_logged_at, self._failures_unlogged = now, 0

    async def _isolate(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        self.metrics.batch_isolations += 1
        for it in batch:
            if it.future.done():
                continue
            self.running, self.running_rows = 1, it.rows
            try:
                if self.inline:
                    outputs = self.model.predict(it.feeds)
                else:
                    outputs = await loop.run_in_executor(self._executor, self.model.predict,
                                                         it.feeds)
            except Exception as e:
                self._log_failure(e)
                if not it.future.done():
                    it.future.set_exception(model_failure(e))
            else:
                if not it.future.done():
                    it.future.set_result(outputs)
            finally:
                self.running = self.running_rows = 0

    async def _run(self, batch: list[_Item]) -> None:
        rows = sum(it.rows for it in batch)
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {name: np.concatenate([it.feeds[name] for it in batch])
                     for name in batch[0].feeds}
        self.running = len(batch)
        self.running_rows = rows
        t0 = self._run_started = time.perf_counter()
        outputs: dict[str, np.ndarray] = {}     # (set by the run below, or it failed)
        try:
            if self.inline:
                outputs = self.model.predict(feeds)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self.model.predict, feeds)
        except Exception as e:  # the model failed on input that passed validation
            if len(batch) == 1:
                self._log_failure(e)
                if not batch[0].future.done():
                    batch[0].future.set_exception(model_failure(e))
                return
            failed = True
        else:
            failed = False
        finally:
            self.running = 0
            self.running_rows = 0
        if failed:
            # One request's inputs can fail a whole batch (a token id past the vocabulary, a
            # value the model rejects): run each request alone so only the guilty one fails.
            await self._isolate(batch)
            return
        elapsed = time.perf_counter() - t0
        # Smoothed over about the last five batches of this size: follows a change of load
        # (CPU shared with others) within a second, without one slow batch deciding alone.
        before = self.batch_seconds.get(rows)
        self.batch_seconds[rows] = elapsed if before is None else 0.8 * before + 0.2 * elapsed
        self.metrics.compute_duration.observe(elapsed)
        self.metrics.batch_size.observe(rows)
        self.last_rows, self.last_seconds, self.rows_since = rows, elapsed, 0
        self.last_done = asyncio.get_running_loop().time()
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        start = 0
        for it in batch:
            end = start + it.rows
            if not it.future.done():
                it.future.set_result({k: v[start:end] for k, v in outputs.items()})
            start = end
