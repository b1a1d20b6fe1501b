"""Dynamic micro-batching: concurrent ``POST /predict`` requests share ONNX Runtime calls.

Each worker process runs ``runners`` *lanes*: threads that take the requests waiting in one
queue, decode and preprocess each, run the ones that decoded as one model call, and build
every response, the prediction-log record and the metrics, then hand the whole batch's
answers back to the event loop in one wake-up. A request costs the event loop one hand-off
(to a lane and back), never a thread per request; a lane does the floor's work in the
floor's order (decode, preprocess, model), one request after the other, so a core is not
shared by several decodes at once.

- Batching: a lane takes every request already waiting (up to ``max_batch``); requests that
  arrive while it decodes join the same model call. When the queue is empty but requests
  are still being read from their clients (``arriving``), it waits for them at most
  ``wait_ms``.
- Large images (over ``inline_pixels``, read from the header as Pillow reads it) decode
  on a side pool of threads, within the decode budget, and then queue again, so one big
  photo does not hold up the small ones behind it in the lane; their model call still
  batches. The small ones a lane decodes stay outside the budget: a lane never waits
  behind large uploads that hold it.
- Hot swap: every request carries the model it read; a batch is split by model, so
  requests that started on the old version finish on it and nothing is dropped.
- Errors: a decode error fails only its request. If a batched call raises, its inputs are
  retried one by one, so only the input that fails alone gets the error. An unexpected
  error in a lane fails the requests it held (500) and the lane goes on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plants_mlops import imaging
from plants_mlops.serving.osthreads import name_os_thread
from plants_mlops.serving.service import ood_of

log = logging.getLogger("plants_mlops.serving.batching")

_STOP = object()
# Images up to this many pixels (about 1000 x 1000) decode on their lane: a few ms at most.
INLINE_PIXELS = 1_000_000


@dataclass(slots=True)
class _Job:
    model: Any  # the ServingModel the request read (ServingModel.run)
    data: bytes  # the upload
    prep: Any  # service.Prepared, once decoded
    request_id: str
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(
        self,
        service,
        *,
        max_batch: int,
        wait_ms: float,
        runners: int = 1,
        on_batch=None,
        inline_pixels: int = INLINE_PIXELS,
        side_threads: int = 4,
    ) -> None:
        self.service = service  # PredictionService: _prepare and _respond
        self.on_batch = on_batch  # callback(size) after each model call (metrics)
        self.max_batch = max(1, int(max_batch))
        self.wait = max(0.0, float(wait_ms)) / 1000.0
        self.runners = max(1, int(runners))
        self.inline_pixels = inline_pixels
        self.side_threads = side_threads
        self.arriving = 0  # requests still reading their upload (on the event loop)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._side: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the lanes; answers go back to the running event loop (the app's lifespan)."""
        self._loop = asyncio.get_running_loop()
        self._side = ThreadPoolExecutor(
            self.side_threads,
            thread_name_prefix="predict-decode",
            initializer=name_os_thread,
            initargs=("predict-decode",),
        )
        self._threads = [
            threading.Thread(target=self._lane, name=f"predict-lane-{i}", daemon=True)
            for i in range(self.runners)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        threads, self._threads = self._threads, []
        await asyncio.to_thread(lambda: [t.join() for t in threads])
        if self._side is not None:  # a large image still decoding queues, then fails below
            await asyncio.to_thread(self._side.shutdown, True)
        while True:  # never left hanging
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    async def predict(self, model, data: bytes, request_id: str):
        """This upload's answer (a PredictionResponse's JSON), computed by a lane in a
        shared model call; an ApiError for an upload that is not a usable image."""
        if self._loop is None:
            raise RuntimeError("the micro-batcher is not running")
        future = self._loop.create_future()
        self._queue.put(_Job(model, data, None, request_id, future))
        return await future

    # -- lane threads -------------------------------------------------------------------

    def _take(self, batch: list[_Job], room: int) -> None:
        """Add to ``batch`` what is waiting, up to ``room`` requests."""
        while room > 0:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is _STOP:
                self._queue.put(_STOP)  # seen at this lane's next turn
                return
            batch.append(job)
            room -= 1

    def _lane(self) -> None:
        name_os_thread("predict-lane")
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            taken = [first]
            answers: list[tuple[asyncio.Future, Any, BaseException | None]] = []
            try:
                self._serve(taken, answers)
            except Exception as exc:  # a bug must not stop the lane: its requests get a 500
                log.exception("prediction lane failed", extra={"event": "lane_failed"})
                answered = {id(future) for future, _, _ in answers}
                answers += [(j.future, None, exc) for j in taken if id(j.future) not in answered]
            if answers:
                self._loop.call_soon_threadsafe(_deliver, answers)

    def _serve(self, taken: list[_Job], answers: list) -> None:
        """Decode ``taken`` (and what joins it), run the model, fill ``answers``."""
        self._take(taken, self.max_batch - 1)
        ready: list[_Job] = []
        self._decode(taken, ready, answers)
        # Requests that arrived while this lane decoded join the same model call; if none
        # did but some are still being read from their clients, wait for them a little.
        deadline = time.perf_counter() + self.wait
        while len(ready) < self.max_batch:
            more: list[_Job] = []
            self._take(more, self.max_batch - len(ready))
            if not more and self.arriving > 0:
                remaining = deadline - time.perf_counter()
                if remaining > 0:
                    try:
                        job = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                    if job is _STOP:
                        self._queue.put(_STOP)
                        break
                    more.append(job)
            if not more:
                break
            taken += more
            self._decode(more, ready, answers)
        self._run(ready, answers)

    def _decode(self, jobs: list[_Job], ready: list[_Job], answers: list) -> None:
        for job in jobs:
            if job.future.cancelled():  # its client went away while it waited
                continue
            if job.prep is None:
                if imaging.header_pixels(job.data) > self.inline_pixels:
                    self._side.submit(self._decode_aside, job)  # queues again once decoded
                    continue
                try:  # small (header checked): outside the decode budget, never waiting
                    job.prep = self.service._prepare(job.model, job.data, budgeted=False)
                except Exception as exc:  # ApiError: this request's own 4xx
                    answers.append((job.future, None, exc))
                    continue
            ready.append(job)

    def _decode_aside(self, job: _Job) -> None:
        try:
            job.prep = self.service._prepare(job.model, job.data)
        except Exception as exc:
            self._loop.call_soon_threadsafe(_deliver, [(job.future, None, exc)])
            return
        self._queue.put(job)

    def _run(self, ready: list[_Job], answers: list) -> None:
        groups: dict[int, list[_Job]] = {}
        for job in ready:  # one call per model: a swap mid-burst splits the batch
            groups.setdefault(id(job.model), []).append(job)
        for jobs in groups.values():
            self._call(jobs, answers)

    def _call(self, jobs: list[_Job], answers: list) -> None:
        model = jobs[0].model
        try:
            out = model.run(np.stack([job.prep.x for job in jobs]))
        except Exception as exc:
            if len(jobs) > 1:  # find the input that fails; the others still get answers
                log.warning(
                    "a batch of %d failed (%s); retrying its inputs one by one",
                    len(jobs),
                    exc,
                    extra={"event": "batch_failed", "size": len(jobs)},
                )
                for job in jobs:
                    self._call([job], answers)
            else:
                answers.append((jobs[0].future, None, exc))
            return
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        for row, job in enumerate(jobs):
            try:
                result = self.service._respond(
                    model,
                    job.prep,
                    out.probabilities[row],
                    out.embeddings[row],
                    job.request_id,
                    "predict",
                    ood_of(out, row),
                ).model_dump_json()
            except Exception as exc:
                answers.append((job.future, None, exc))
                continue
            answers.append((job.future, result, None))


def _deliver(answers: list) -> None:
    """On the event loop: each request's answer (a client that went away cancelled its
    future)."""
    for future, result, exc in answers:
        if future.done():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
