"""Dynamic micro-batching: concurrent ``POST /predict`` requests share ONNX Runtime calls.

Each request still decodes and preprocesses its own image (in the thread pool, in
parallel), then hands its model input to the :class:`MicroBatcher` and awaits its own row
of the result; the response, the prediction-log record and the metrics stay per request
(``PredictionService._respond``). A runner takes the first waiting input and, while other
requests are still being decoded, waits at most ``wait_ms`` for more (up to ``max_batch``),
then runs them as one batch. A request whose input is ready while nothing else is in
flight runs its model call on its own decode thread (:meth:`MicroBatcher.claim_alone`): it
pays no batching delay and no hand-offs to the event loop and a runner thread.

- Hot swap: every input carries the model its request read; a batch is split by model, so
  requests that started on the old version finish on it and nothing is dropped.
- Errors: decode errors happen before an input is queued and fail only their request. If
  a batched call raises, its inputs are retried one by one, so only the input that fails
  alone gets the error.
- ``runners`` batches can run at once (one ONNX Runtime call each, on its own thread).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plants_mlops.serving.osthreads import name_os_thread

log = logging.getLogger("plants_mlops.serving.batching")


@dataclass
class _Pending:
    model: Any  # the ServingModel the request read (ServingModel.run)
    x: np.ndarray  # CHW float32 model input
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(self, *, max_batch: int, wait_ms: float, runners: int = 1, on_batch=None) -> None:
        self.on_batch = on_batch  # callback(size) after each model call (metrics)
        self.max_batch = max(1, int(max_batch))
        self.wait = max(0.0, float(wait_ms)) / 1000.0
        self.runners = max(1, int(runners))
        self.preparing = 0  # requests decoding now (their inputs will follow soon)
        self.running = 0  # model calls running now (batches, and lone requests' own calls)
        self._running_lock = threading.Lock()  # lone calls claim a runner from a decode thread
        self._queue: asyncio.Queue[_Pending] | None = None
        self._tasks: list[asyncio.Task] = []
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the runners on the running event loop (the app's lifespan)."""
        self._queue = asyncio.Queue()
        self._pool = ThreadPoolExecutor(
            self.runners,
            thread_name_prefix="batch-run",
            initializer=name_os_thread,
            initargs=("batch-run",),
        )
        self._tasks = [
            asyncio.get_running_loop().create_task(self._runner(), name=f"batch-runner-{i}")
            for i in range(self.runners)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while self._queue is not None and not self._queue.empty():  # never left hanging
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def claim_alone(self) -> bool:
        """From a decode thread, once its input is ready: True (and a runner taken) when
        this request is the only one in flight, nothing is queued and a runner is free, so
        it runs its model call right there (:meth:`run_alone`): no batch could form anyway,
        and the hand-offs to the event loop and to a runner thread and back are saved."""
        with self._running_lock:
            queue = self._queue
            if queue is None or not queue.empty() or self.preparing > 1:
                return False
            if self.running >= self.runners:
                return False
            self.running += 1
            return True

    def run_alone(self, model, x: np.ndarray):
        """The model call of a request :meth:`claim_alone` let through, on its own thread."""
        try:
            out = model.run(x[None])
        finally:
            with self._running_lock:
                self.running -= 1
        if self.on_batch is not None:
            self.on_batch(1)
        return out

    async def prepare(self, work: Awaitable):
        """Await a request's decode + preprocess, counted so runners know more is coming."""
        self.preparing += 1
        try:
            return await work
        finally:
            self.preparing -= 1

    async def infer(self, model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This input's (probabilities, embedding), computed in a shared batch."""
        if self._queue is None:
            raise RuntimeError("the micro-batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(model, x, future))
        return await future

    async def _collect(self) -> list[_Pending]:
        queue = self._queue
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if self.preparing <= 0 or remaining <= 0:
                break  # nothing else on its way, or waited long enough
            try:  # asyncio.timeout: wait_for would wrap the get in a new Task
                async with asyncio.timeout(remaining):
                    batch.append(await queue.get())
            except TimeoutError:
                break
        return batch

    async def _runner(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[int, list[_Pending]] = {}
            for item in batch:  # one call per model: a swap mid-burst splits the batch
                groups.setdefault(id(item.model), []).append(item)
            for items in groups.values():
                try:
                    await self._run(loop, items)
                except asyncio.CancelledError:
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(RuntimeError("the server is shutting down"))
                    raise

    async def _run(self, loop, items: list[_Pending]) -> None:
        model = items[0].model
        with self._running_lock:
            self.running += 1
        try:
            out = await loop.run_in_executor(
                self._pool, model.run, np.stack([item.x for item in items])
            )
        except Exception as exc:
            out, failure = None, exc
        finally:
            with self._running_lock:
                self.running -= 1
        if out is None:
            if len(items) > 1:  # find the input that fails; the others still get answers
                log.warning(
                    "a batch of %d failed (%s); retrying its inputs one by one",
                    len(items),
                    failure,
                    extra={"event": "batch_failed", "size": len(items)},
                )
                for item in items:
                    await self._run(loop, [item])
                return
            if not items[0].future.done():
                items[0].future.set_exception(failure)
            return
        if self.on_batch is not None:
            self.on_batch(len(items))
        for row, item in enumerate(items):
            if not item.future.done():  # a client that went away cancelled its future
                item.future.set_result((out.probabilities[row], out.embeddings[row]))


async def predict_one(service, batcher: MicroBatcher, model, data: bytes, request_id: str):
    """``PredictionService.predict_one`` with the model call shared through ``batcher``:
    decode and preprocess on the thread pool, infer in a batch, respond per request. A
    request alone in flight runs its model call on its decode thread instead."""
    from starlette.concurrency import run_in_threadpool

    def decode_and_maybe_run():
        prep = service._prepare(model, data)
        return prep, (batcher.run_alone(model, prep.x) if batcher.claim_alone() else None)

    prep, out = await batcher.prepare(run_in_threadpool(decode_and_maybe_run))
    if out is not None:  # ran alone on the decode thread
        probs, emb = out.probabilities[0], out.embeddings[0]
    else:
        probs, emb = await batcher.infer(model, prep.x)
    return service._respond(model, prep, probs, emb, request_id, "predict")
