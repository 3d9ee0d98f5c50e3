"""One batch job running: records read ahead, fanned over the ready instances, checkpointed, assembled.

Three kinds of task share the runner's loop. The producer pulls record batches from
`sources.batches` (in a worker thread) and queues them; per ready instance, `inflight` workers
take records from the queue and call the instance; the flusher periodically writes the outputs
of finished records and then commits them (`checkpoint.commit`). When the inputs are exhausted
and every record is committed, the manifest is assembled and the job finishes.

Invariants:
- `outstanding` counts records produced and not yet committed or dropped; the producer waits while
  it is at the read-ahead limit, so memory is bounded whatever the input size;
- a record is committed only after its output is written; a record that is dropped (the job is
  stopping, or its call was cut short) is simply not committed, and the next run redoes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine, Iterator
from typing import Any

from modelport.batch import checkpoint, outputs
from modelport.batch.calls import Deadlines, Reply, Transient, call, model_error
from modelport.batch.settings import BatchSettings
from modelport.batch.sources import Record, Result, batches, count_records
from modelport.batch.spec import JobSpec
from modelport.gateway.upstream import Pool
from modelport.store.db import Store

log = logging.getLogger("modelport.batch")

Endpoint = tuple[str, int]
_FILE_READ_AHEAD = 64  # whole files are held in memory while they wait: keep fewer of them
_WRITE_ATTEMPTS = 3


class JobFailed(Exception):
    """The job cannot go on (its outputs cannot be written); it fails with this message."""


class JobRun:
    def __init__(self, store: Store, settings: BatchSettings, spec: JobSpec, pool: Pool) -> None:
        self.store = store
        self.settings = settings
        self.spec = spec
        self.pool = pool
        self.service_id = spec.service_id
        self.inflight: dict[str, int] = {}
        self._queue: asyncio.Queue[Record] = asyncio.Queue()
        self._results: list[Result] = []
        self._outstanding = 0
        self._limit = (
            min(settings.batch_read_ahead, _FILE_READ_AHEAD) if spec.mode == "file" else settings.batch_read_ahead
        )
        self._room = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._produced_all = False
        self._stopping = False
        self._stopped = asyncio.Event()
        self._workers: dict[str, list[asyncio.Task[None]]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._per_instance = max(1, settings.batch_inflight_per_instance)
        self._total: int | None = None
        self._rate_window: deque[tuple[float, int]] = deque(maxlen=40)
        self._tasks: list[asyncio.Task[None]] = []
        self._error: Exception | None = None
        self._flusher_done = False
        self._resumed = True  # until the checkpoint says otherwise
        self._deadlines = Deadlines(settings.batch_request_timeout_s)

    # ---- control (runner side) -------------------------------------------------------
    def set_instances(self, endpoints: dict[str, Endpoint]) -> None:
        """Keep `inflight_per_instance` workers on each ready instance; stop those of the others."""
        if self._stopping:
            return
        # An instance restarted by the orchestrator keeps its id but gets a new port: new workers.
        for iid in [i for i in self._workers if self._endpoints.get(i) != endpoints.get(i)]:
            for task in self._workers.pop(iid):
                task.cancel()
            del self._endpoints[iid]
        for iid, (host, port) in endpoints.items():
            if iid not in self._workers:
                self.inflight.setdefault(iid, 0)
                self._endpoints[iid] = (host, port)
                n = self._per_instance
                self._workers[iid] = [asyncio.create_task(self._worker(iid, host, port)) for _ in range(n)]

    def stop(self) -> None:
        """Stop taking records; what is finished gets committed, the rest is redone next run."""
        self._stopping = True
        self._stopped.set()

    # ---- the run ---------------------------------------------------------------------
    async def run(self) -> None:
        try:
            progress = await asyncio.to_thread(checkpoint.start, self.store, self.service_id)
            self._resumed = progress.processed > 0
            self._total = progress.total
            self._note_rate(progress.processed)
            if self._total is None:
                self._tasks.append(asyncio.create_task(self._count()))
            self._tasks.append(asyncio.create_task(self._guard(self._produce())))
            flusher = asyncio.create_task(self._guard(self._flusher()))
            ended = await self._until_done()
            self._stopping = True
            tasks = [*self._tasks, *(t for ts in self._workers.values() for t in ts)]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Never cut a flush short: its outputs may be written and its commit not yet made.
            self._flusher_done = True
            self._flush_now.set()
            await flusher
            if self._error is not None:
                raise self._error
            await self._flush()
            if ended:
                await self._finish()
        except JobFailed as exc:
            await asyncio.to_thread(checkpoint.finish, self.store, self.service_id, False, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("batch job of %s failed", self.service_id)
            msg = f"Batch job failed: internal error ({type(exc).__name__}: {exc}); see the platform log."
            await asyncio.to_thread(checkpoint.finish, self.store, self.service_id, False, msg)
        finally:
            self.inflight.clear()
            self._deadlines.close()

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a task of the job; its failure ends the run (and, via `_error`, the job)."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
            self._stopped.set()

    async def _until_done(self) -> bool:
        """Wait until every record is committed (True) or the job is stopped (False)."""
        while True:
            if self._stopped.is_set():
                return False
            if self._produced_all and self._outstanding == 0:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), 0.05)

    async def _finish(self) -> None:
        def assemble() -> None:
            outputs.assemble(self.spec, self.settings, checkpoint.records(self.store, self.service_id))

        try:
            await asyncio.to_thread(_retry_writes, assemble)
        except Exception as exc:
            raise JobFailed(f"Batch job failed: cannot write the results to {self.spec.dest.url}: {exc}") from None
        final = await asyncio.to_thread(checkpoint.commit, self.store, self.service_id, [], None, None)
        done = f"{final.succeeded} succeeded, {final.failed} failed" if final else "done"
        manifest = self.spec.dest.url_of(outputs.manifest_path(self.spec))
        msg = f"Batch job finished: {done}. Manifest: {manifest}"
        await asyncio.to_thread(checkpoint.finish, self.store, self.service_id, True, msg)

    # ---- producer --------------------------------------------------------------------
    async def _produce(self) -> None:
        def is_done(keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
            # Only records committed before this run can be done: a first run skips the look-up.
            return checkpoint.done_keys(self.store, self.service_id, keys) if self._resumed else set()

        gen: Iterator[list[Record | Result]] = batches(self.spec, self.settings, is_done)
        try:
            while not self._stopping:
                # Read ahead at least twice what the instances can have in flight.
                while self._outstanding >= max(self._limit, 2 * self._per_instance * len(self._workers)):
                    self._room.clear()
                    await self._room.wait()
                batch = await asyncio.to_thread(next, gen, None)
                if batch is None:
                    self._produced_all = True
                    return
                self._outstanding += len(batch)
                for item in batch:
                    if isinstance(item, Result):
                        self._resolve(item)
                    else:
                        self._queue.put_nowait(item)
        finally:
            with contextlib.suppress(ValueError):  # still running in its thread if we were cancelled
                gen.close()

    async def _count(self) -> None:
        try:
            self._total = await asyncio.to_thread(count_records, self.spec, self.settings)
        except Exception:
            log.exception("counting the records of %s failed", self.service_id)

    # ---- workers ---------------------------------------------------------------------
    async def _worker(self, iid: str, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            rec = await self._queue.get()
            self.inflight[iid] = self.inflight.get(iid, 0) + 1
            try:
                reply = await call(self.pool, host, port, rec.head, rec.body, self._deadlines)
            except Transient as exc:
                if self._stopping:
                    self._drop()
                    continue
                if not exc.sent:
                    # The request never reached the instance: no attempt used; let the others take it.
                    self._queue.put_nowait(rec)
                    await asyncio.sleep(1.0)
                    continue
                rec.attempts += 1
                if rec.attempts > self.settings.batch_retries:
                    self._resolve(_failed(rec, f"gave up after {rec.attempts} attempts: {exc}"))
                else:
                    delay = self.settings.batch_retry_backoff_s * 2 ** (rec.attempts - 1)
                    loop.call_later(delay, self._queue.put_nowait, rec)
                    await asyncio.sleep(min(delay, 1.0))  # this instance may be going away: pause it
                continue
            except asyncio.CancelledError:
                if self._stopping:
                    self._drop()
                else:
                    self._queue.put_nowait(rec)  # the instance left: another one takes the record
                raise
            finally:
                if iid in self.inflight:
                    self.inflight[iid] -= 1
            self._resolve(self._outcome(rec, reply))

    def _outcome(self, rec: Record, reply: Reply) -> Result:
        if not 200 <= reply.status < 300:
            return _failed(rec, model_error(reply))
        output: bytes | str = reply.body if self.spec.mode == "file" else outputs.csv_line(reply.body)
        return Result(rec.source, rec.row, rec.name, True, output)

    def _resolve(self, result: Result) -> None:
        self._results.append(result)
        if len(self._results) >= self.settings.batch_flush_records:
            self._flush_now.set()

    def _drop(self) -> None:
        self._outstanding -= 1
        self._room.set()

    # ---- checkpoint --------------------------------------------------------------------
    async def _flusher(self) -> None:
        while not self._flusher_done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.settings.batch_flush_interval_s)
            self._flush_now.clear()
            await self._flush()

    async def _flush(self) -> None:
        if not self._results:
            return
        results, self._results = self._results, []
        try:
            if self.spec.mode == "file":
                await asyncio.to_thread(_retry_writes, lambda: outputs.write_file_results(self.spec, results))
        except Exception as exc:
            raise JobFailed(f"Batch job failed: cannot write results to {self.spec.dest.url}: {exc}") from None
        processed_before = self._rate_window[-1][1] if self._rate_window else 0
        rate = self._rate(processed_before + len(results))
        progress = await asyncio.to_thread(
            checkpoint.commit, self.store, self.service_id, results, rate, self._total, self.spec.manifest
        )
        self._outstanding -= len(results)
        self._room.set()
        if progress is None:  # the service was deleted or the job ended meanwhile
            self.stop()
        else:
            self._note_rate(progress.processed)

    def _rate(self, processed: int) -> float:
        now = time.monotonic()
        if not self._rate_window:
            return 0.0
        t0, p0 = self._rate_window[0]
        return (processed - p0) / (now - t0) if now - t0 > 0.2 else 0.0

    def _note_rate(self, processed: int) -> None:
        self._rate_window.append((time.monotonic(), processed))


def _failed(rec: Record, error: str) -> Result:
    return Result(rec.source, rec.row, rec.name, False, error=error)


def _retry_writes(fn) -> None:  # type: ignore[no-untyped-def]
    for attempt in range(_WRITE_ATTEMPTS):
        try:
            fn()
            return
        except Exception:
            if attempt == _WRITE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * 2**attempt)
