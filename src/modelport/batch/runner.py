"""The batch runner: one `JobRun` per batch service that should run, fed with its ready instances.

Level-triggered like the orchestrator, and like it on its own thread and event loop: every tick it
reads from the store which batch services want to run and which of their instances are ready
(the orchestrator starts, probes and stops them; nothing here manages instances), starts or stops
job runs to match, and hands each run its ready instances. All job state is in the store, so after
a platform restart the jobs simply carry on from their checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from modelport.batch import checkpoint
from modelport.batch.job import Endpoint, JobRun
from modelport.batch.settings import BatchSettings
from modelport.batch.spec import job_spec
from modelport.errors import PlatformError
from modelport.gateway.upstream import Pool
from modelport.settings import Settings
from modelport.store.db import Store
from modelport.store.tables import Instance, Model, Service

log = logging.getLogger("modelport.batch")


@dataclass(frozen=True)
class _Wanted:
    config: dict[str, Any]
    model_config: dict[str, Any] | None
    endpoints: dict[str, Endpoint]


class BatchRunner:
    def __init__(self, settings: Settings, store: Store, batch: BatchSettings | None = None) -> None:
        self.settings = settings
        self.store = store
        self.batch = batch or BatchSettings()
        self._runs: dict[str, JobRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self.ready = threading.Event()

    # ---- thread lifecycle -------------------------------------------------------------
    def start_thread(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="modelport-batch", daemon=True)
        self._thread.start()
        self.ready.wait(30)

    def stop_thread(self, timeout: float = 30.0) -> None:
        """Stop every job run (finished records are committed first) and the thread."""
        self._stop_requested = True
        self.wake()
        if self._thread:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look at the store now instead of at the next tick (after an API change)."""
        if self._loop and self._wake and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake.set)

    def inflight(self, instance_id: str) -> int:
        """Records being sent to this instance now (the orchestrator drains an instance by this)."""
        return sum(run.inflight.get(instance_id, 0) for run in list(self._runs.values()))

    def _thread_main(self) -> None:
        try:
            import uvloop

            uvloop.run(self._main())
        except ImportError:
            asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._pool = Pool(max_idle=256)
        self.ready.set()
        try:
            while not self._stop_requested:
                try:
                    await self._tick()
                except Exception:
                    log.exception("batch runner tick failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.batch.batch_tick_s)
                self._wake.clear()
        finally:
            for run in self._runs.values():
                run.stop()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            await self._pool.aclose()

    # ---- the tick ----------------------------------------------------------------------
    async def _tick(self) -> None:
        wanted = await asyncio.to_thread(self._scan)
        for sid in [sid for sid, task in self._tasks.items() if task.done()]:
            del self._tasks[sid], self._runs[sid]
        for sid, run in self._runs.items():
            if sid not in wanted:
                run.stop()
        for sid, want in wanted.items():
            run = self._runs.get(sid)
            if run is None:
                run = await self._start(sid, want)
            if run is not None:
                run.set_instances(want.endpoints)

    async def _start(self, service_id: str, want: _Wanted) -> JobRun | None:
        try:
            spec = job_spec(service_id, want.config, want.model_config, self.batch)
        except PlatformError as exc:
            msg = f"Batch job failed: {exc.message}"
            await asyncio.to_thread(checkpoint.finish, self.store, service_id, False, msg)
            return None
        run = JobRun(self.store, self.batch, spec, self._pool)
        self._runs[service_id] = run
        self._tasks[service_id] = asyncio.create_task(run.run())
        return run

    def _scan(self) -> dict[str, _Wanted]:
        """Batch services that should run, with their model's config and their ready instances."""
        with self.store.session() as s:
            services = s.scalars(
                select(Service).where(Service.infer_type == "batch", Service.desired == "running")
            ).all()
            if not services:
                return {}
            endpoints: dict[str, dict[str, Endpoint]] = {svc.id: {} for svc in services}
            ready = s.scalars(
                select(Instance).where(Instance.service_id.in_(list(endpoints)), Instance.status == "ready")
            )
            for inst in ready:
                if inst.handle:
                    endpoints[inst.service_id][inst.id] = (inst.handle["host"], int(inst.handle["port"]))
            wanted = {}
            for svc in services:
                cfg = svc.config[0]
                model = s.get(Model, cfg["model_id"])
                wanted[svc.id] = _Wanted(cfg, model.config if model else None, endpoints[svc.id])
            return wanted
