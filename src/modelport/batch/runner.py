"""The batch runner: one `JobRun` per batch service that should run, fed with its ready instances.

Level-triggered like the orchestrator, and like it on its own thread and event loop: every tick it
reads from the store which batch services want to run and which of their instances are ready
(the orchestrator starts, probes and stops them; nothing here manages instances), starts or stops
job runs to match, and hands each run its ready instances. All job state is in the store, so after
a platform restart the jobs simply carry on from their checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from modelport.batch import checkpoint
from modelport.batch.job import Endpoint, JobRun
from modelport.batch.settings import BatchSettings
from modelport.batch.spec import job_spec
from modelport.errors import PlatformError
from modelport.gateway.upstream import Pool
from modelport.loopthread import LoopThread
from modelport.settings import Settings
from modelport.store.db import Store
from modelport.store.tables import Instance, Model, Service

log = logging.getLogger("modelport.batch")


@dataclass(frozen=True)
class _Wanted:
    config: dict[str, Any]
    model_config: dict[str, Any] | None
    endpoints: dict[str, Endpoint]


class BatchRunner(LoopThread):
    thread_name = "modelport-batch"
    use_uvloop = True

    def __init__(self, settings: Settings, store: Store, batch: BatchSettings | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.batch = batch or BatchSettings()
        self._runs: dict[str, JobRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # ---- thread lifecycle -------------------------------------------------------------
    def stop_thread(self, timeout: float = 30.0) -> None:
        """Stop every job run (finished records are committed first) and the thread."""
        self._stop_and_join(timeout)

    def inflight(self, instance_id: str) -> int:
        """Records being sent to this instance now (the orchestrator drains an instance by this)."""
        return sum(run.inflight.get(instance_id, 0) for run in list(self._runs.values()))

    def interval(self) -> float:
        return self.batch.batch_tick_s

    async def setup(self) -> None:
        self._pool = Pool(max_idle=256)

    async def cleanup(self) -> None:
        for run in self._runs.values():
            run.stop()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if hasattr(self, "_pool"):
            await self._pool.aclose()

    # ---- the tick ----------------------------------------------------------------------
    async def tick(self) -> None:
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
