"""The reconcile loop: desired service configs in the store → instances through the backend.

Level-triggered: every tick reads what the store wants and what runs, and closes the gap one
safe step at a time (start, probe, restart with back-off, roll, drain, stop). Everything it must
remember across its own restart is in the store (instances carry their backend handle); the
in-memory state here (probe counters, stop tasks) is rebuilt from scratch after a restart.

It runs on its own thread and event loop so that store I/O never stalls the gateway; it talks to
the gateway only through `post`, which runs a call on the gateway's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modelport.backends.base import Backend, InstanceHandle, InstanceSpec
from modelport.control.flavors import resources
from modelport.control.service_limits import route_fields
from modelport.loopthread import LoopThread
from modelport.orchestrator.probes import Prober, ProbeResult
from modelport.orchestrator.status import LIVE, InstanceView, service_state
from modelport.packages import HealthConfig, ModelPackage, load_package
from modelport.settings import Settings
from modelport.store.db import Store
from modelport.store.events import add_event
from modelport.store.tables import BatchJob, BatchRecord, Event, Instance, Model, Service, ServiceUpdate
from modelport.timeutil import now_ms

log = logging.getLogger("modelport.orchestrator")

INSTANCES = Gauge("modelport_instances", "Instances per service and state", ["service_id", "state"])
_INSTANCE_STATES = ("starting", "ready", "notReady", "crashed", "draining", "failed")

# An instance that never became ready gets this many starts before it is declared failed.
_FIRST_START_ATTEMPTS = 3
_LLM_STATS_PERIOD_S = 5.0
# Engine figures that add up over instances; the rest are recomputed from these.
_LLM_SUMS = (
    "num_requests_running",
    "num_requests_waiting",
    "kv_blocks_total",
    "kv_blocks_used",
    "kv_blocks_cached",
    "prefix_cache_queried_tokens",
    "prefix_cache_hit_tokens",
    "num_preemptions",
    "prompt_tokens_total",
    "generation_tokens_total",
)
_LOG_LINES_IN_ERRORS = 12


@dataclass
class _Probe:
    failures: int = 0
    next_at: float = 0.0


@dataclass
class Gateway:
    """What the orchestrator needs of the gateway, called on the gateway's loop through `post`."""

    set_routes: Callable[[Any], None]
    endpoint_down: Callable[[str], None]
    inflight: Callable[[str], int]
    take_stats: Callable[[], dict[str, tuple[int, int]]]
    post: Callable[..., concurrent.futures.Future[Any]] = field(default=lambda fn, *a: _done(fn(*a)))


class Orchestrator(LoopThread):
    thread_name = "modelport-orchestrator"

    def __init__(self, settings: Settings, store: Store, backend: Backend, gateway: Gateway) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.backend = backend
        self.gateway = gateway
        self._probes: dict[str, _Probe] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._packages: dict[str, ModelPackage] = {}
        self._routes_sig: object = None
        self._metric_labels: set[tuple[str, str]] = set()
        self._routes_applied: concurrent.futures.Future[Any] | None = None
        self._route_revision = 0
        self._stop_instances_on_exit = True
        self._last_stats = 0.0
        self._last_llm_stats = 0.0
        self._ticks = 0

    # ---- thread lifecycle -------------------------------------------------------------
    def stop_thread(self, stop_instances: bool = True, timeout: float = 120.0) -> None:
        self._stop_instances_on_exit = stop_instances
        self._stop_and_join(timeout)

    def interval(self) -> float:
        return self.settings.reconcile_interval_s

    async def setup(self) -> None:
        self.prober = Prober()
        await asyncio.to_thread(self._recover)

    async def wind_down(self) -> None:
        await self._shutdown()

    async def cleanup(self) -> None:
        if hasattr(self, "prober"):
            await self.prober.aclose()

    # ---- recovery and shutdown ---------------------------------------------------------
    def _recover(self) -> None:
        """After a (re)start: re-adopt live instances that are still ours, mark the rest for restart."""
        with self.store.session() as s:
            for inst in s.scalars(select(Instance).where(Instance.status.in_(LIVE))):
                handle = InstanceHandle.from_dict(inst.handle) if inst.handle else None
                if handle and self.backend.adopt(handle):
                    log.info("re-adopted instance %s (pid %s)", inst.id, handle.pid)
                    if inst.status == "draining":
                        inst.status = "ready"  # the drain decision is taken again this tick
                    continue
                if inst.status == "draining":
                    inst.status = "stopped"
                else:
                    inst.status, inst.handle, inst.next_start_at = "crashed", None, now_ms()
                    inst.message = "the platform restarted and the instance was gone; starting it again"
            for svc in s.scalars(select(Service).where(Service.desired == "running")):
                live = s.scalar(select(Instance.id).where(Instance.service_id == svc.id, Instance.status == "ready"))
                if not live and svc.status in ("running", "concerning"):
                    svc.status, svc.progress = "deploying", 0

    async def _shutdown(self) -> None:
        for task in list(self._stopping.values()):
            task.cancel()
        if not self._stop_instances_on_exit:
            return
        with self.store.session() as s:
            live = list(s.scalars(select(Instance).where(Instance.status.in_(LIVE))))
            handles = [(i.id, InstanceHandle.from_dict(i.handle)) for i in live if i.handle]
        grace = 10.0
        await asyncio.gather(*(self.backend.stop(h, grace) for _id, h in handles), return_exceptions=True)
        with self.store.session() as s:
            for inst in s.scalars(select(Instance).where(Instance.status.in_(LIVE))):
                inst.status, inst.message = "stopped", "stopped with the platform"

    # ---- the tick ----------------------------------------------------------------------
    async def tick(self) -> None:
        self._ticks += 1
        starts: list[tuple[str, InstanceSpec]] = []
        probes: list[tuple[str, InstanceHandle, HealthConfig, bool]] = []
        drains: list[tuple[str, InstanceHandle | None, float]] = []
        with self.store.session() as s:
            services = list(s.scalars(select(Service)))
            by_service: dict[str, list[Instance]] = {}
            for inst in s.scalars(select(Instance)):
                by_service.setdefault(inst.service_id, []).append(inst)
            for svc in services:
                insts = by_service.setdefault(svc.id, [])
                self._watch_processes(s, svc, insts)
                self._plan(s, svc, insts, starts, drains)
                self._collect_probes(s, svc, insts, probes)
                self._update_status(s, svc, insts)
            self._publish_routes(services, by_service)
            self._export_metrics(services, by_service)
            self._flush_stats(s)
        # Act outside the session: starting and probing take real time.
        for instance_id, handle, grace in drains:
            if instance_id not in self._stopping:
                self._stopping[instance_id] = asyncio.create_task(self._drain(instance_id, handle, grace))
        if starts:
            await asyncio.gather(*(self._start(iid, spec) for iid, spec in starts))
        if probes:
            await asyncio.gather(*(self._probe(*p) for p in probes))
        if self._ticks % 20 == 0:
            await asyncio.to_thread(self._maintain_logs)
        if time.monotonic() - self._last_llm_stats >= _LLM_STATS_PERIOD_S:
            self._last_llm_stats = time.monotonic()
            await self._collect_llm_stats()
        if self._ticks % 120 == 1:
            await asyncio.to_thread(self._expire_instances)

    # Instances whose process died while we thought it alive.
    def _watch_processes(self, s: Session, svc: Service, insts: list[Instance]) -> None:
        for inst in insts:
            if inst.status not in ("starting", "ready", "notReady") or not inst.handle:
                continue
            handle = InstanceHandle.from_dict(inst.handle)
            state = self.backend.poll(handle)
            if state.running:
                continue
            if inst.status == "ready":
                self.gateway.post(self.gateway.endpoint_down, inst.id)
            self._crashed(s, svc, inst, handle, state.exit_code, state.detail or "exited")

    def _crashed(
        self,
        s: Session,
        svc: Service,
        inst: Instance,
        handle: InstanceHandle | None,
        code: int | None,
        how: str,
    ) -> None:
        tail = self._log_tail(handle)
        never_ready = inst.ready_at is None
        inst.start_failures += 1
        inst.exit_code = code
        inst.handle = None
        self._probes.pop(inst.id, None)
        where = "before becoming ready" if never_ready else "while serving"
        msg = f"Instance {inst.id} {how} (exit code {code}) {where}."
        if tail:
            msg += " Last log lines:\n" + tail
        inst.message = msg
        limit = _FIRST_START_ATTEMPTS if never_ready else self.settings.restart_limit
        if inst.start_failures >= limit:
            inst.status, inst.ended_at = "failed", now_ms()
            add_event(
                s,
                svc.id,
                svc.project_id,
                f"{msg} Gave up after {inst.start_failures} attempts.",
                abnormal=True,
            )
            return
        delay = min(
            self.settings.restart_backoff_max_s,
            self.settings.restart_backoff_s * 2 ** (inst.start_failures - 1),
        )
        inst.status = "crashed"
        inst.next_start_at = now_ms() + int(delay * 1000)
        add_event(s, svc.id, svc.project_id, f"{msg} Restarting in {delay:g} s.", abnormal=True)

    def _log_tail(self, handle: InstanceHandle | None) -> str:
        if handle is None:
            return ""
        try:
            lines = list(self.backend.read_logs(handle, tail=_LOG_LINES_IN_ERRORS))
        except OSError:
            return ""
        return "\n".join(line.rstrip("\n") for line in lines)

    def _plan(
        self,
        s: Session,
        svc: Service,
        insts: list[Instance],
        starts: list[tuple[str, InstanceSpec]],
        drains: list[tuple[str, InstanceHandle | None, float]],
    ) -> None:
        """Decide which instances to create, start again, or drain for this service."""
        live = [i for i in insts if i.status in LIVE and i.status != "draining"]
        # "finished"/"failed": a batch job that ended (set by the batch runner); its instances go.
        if svc.desired in ("stopped", "deleted", "finished", "failed"):
            for inst in live:
                self._mark_drain(s, svc, inst, drains, "the service is stopping")
            if svc.desired == "deleted" and not any(i.status in LIVE for i in insts):
                s.execute(delete(Event).where(Event.service_id == svc.id))
                s.execute(delete(Instance).where(Instance.service_id == svc.id))
                s.execute(delete(ServiceUpdate).where(ServiceUpdate.service_id == svc.id))
                s.execute(delete(BatchRecord).where(BatchRecord.service_id == svc.id))
                s.execute(delete(BatchJob).where(BatchJob.service_id == svc.id))
                s.delete(svc)
                shutil.rmtree(self.settings.logs_dir / svc.id, ignore_errors=True)
            return
        if svc.due_time and now_ms() >= svc.due_time:
            svc.desired, svc.due_time = "stopped", None
            add_event(
                s,
                svc.id,
                svc.project_id,
                f"Service {svc.name} stopped because its auto-stop time was reached.",
            )
            return
        now = now_ms()
        for slot, cfg in enumerate(svc.config):
            mine = [i for i in live if i.slot == slot]
            cur = [i for i in mine if i.revision == cfg["revision"]]
            old = [i for i in mine if i.revision != cfg["revision"]]
            failed_cur = [i for i in insts if i.slot == slot and i.revision == cfg["revision"] and i.status == "failed"]
            want = cfg["instance_count"]
            props = cfg.get("additional_properties") or {}
            surge = _count(props.get("max_surge", 1), want, at_least=1)
            # Scale down within the current revision: the least useful instances go first.
            surplus = len(cur) + len(failed_cur) - want
            for inst in failed_cur[: max(0, surplus)]:
                inst.status = "stopped"
                surplus -= 1
            if surplus > 0:
                order = {"crashed": 0, "starting": 1, "notReady": 2, "ready": 3}
                for inst in sorted(cur, key=lambda i: order.get(i.status, 0))[:surplus]:
                    self._mark_drain(s, svc, inst, drains, "scaling in")
                cur = [i for i in cur if i.status != "draining"]
            # Start what is missing, keeping at most want + surge processes while old ones remain.
            missing = want - len(cur) - len(failed_cur)
            room = want + surge - len(cur) - len(old) if old else missing
            for _ in range(max(0, min(missing, room))):
                inst = self._new_instance(s, svc, slot, cfg)
                cur.append(inst)
                insts.append(inst)
            if old and failed_cur:
                self._roll_back(s, svc, failed_cur[-1].message)
                return
            # Old revision: drain one per ready new instance beyond what keeps capacity at
            # `want - max_unavailable` (default: no capacity is ever given up during a roll).
            unavailable = _count(props.get("max_unavailable", 0), want, at_least=0)
            ready_cur = sum(1 for i in cur if i.status == "ready")
            excess = ready_cur + len(old) - max(0, want - unavailable)
            for inst in sorted(old, key=lambda i: i.status == "ready")[: max(0, excess)]:
                self._mark_drain(s, svc, inst, drains, f"replaced by revision {cfg['revision']}")
            # Instances waiting for their (re)start.
            for inst in cur:
                if inst.status == "crashed" and (inst.next_start_at or 0) <= now:
                    spec = self._spec(s, svc, inst, cfg)
                    if spec is not None:
                        inst.status = "starting"
                        starts.append((inst.id, spec))
                elif inst.status == "starting" and inst.handle is None and inst.id not in self._stopping:
                    spec = self._spec(s, svc, inst, cfg)
                    if spec is not None:
                        starts.append((inst.id, spec))
        for inst in live:
            if inst.slot >= len(svc.config) and inst.status != "draining":
                self._mark_drain(s, svc, inst, drains, "its config was removed")

    def _roll_back(self, s: Session, svc: Service, reason: str | None) -> None:
        """A new revision failed while the old one still serves: go back to the config that ran."""
        previous = svc.extra.get("previous_config")
        why = (reason or "the new instances did not become ready").rstrip(".")
        if not previous:
            return
        svc.config = previous
        svc.generation += 1
        msg = f"Update failed and was rolled back; the previous configuration keeps serving. Reason: {why}"
        svc.extra = {**{k: v for k, v in svc.extra.items() if k != "previous_config"}, "update_error": msg}
        add_event(s, svc.id, svc.project_id, msg, abnormal=True)
        self._finish_update(s, svc, "FAIL", msg)

    def _finish_update(self, s: Session, svc: Service, result: str, detail: str | None = None) -> None:
        for upd in s.scalars(
            select(ServiceUpdate).where(ServiceUpdate.service_id == svc.id, ServiceUpdate.result == "RUNNING")
        ):
            upd.result, upd.detail = result, detail

    def _new_instance(self, s: Session, svc: Service, slot: int, cfg: dict[str, Any]) -> Instance:
        inst = Instance(
            id=f"{svc.name[:20]}-{uuid.uuid4().hex[:8]}",
            service_id=svc.id,
            slot=slot,
            revision=cfg["revision"],
            model_id=cfg["model_id"],
            status="starting",
            restarts=0,
            start_failures=0,
            created_at=now_ms(),
        )
        s.add(inst)
        s.flush()
        return inst

    def _mark_drain(
        self,
        s: Session,
        svc: Service,
        inst: Instance,
        drains: list[tuple[str, InstanceHandle | None, float]],
        why: str,
    ) -> None:
        handle = InstanceHandle.from_dict(inst.handle) if inst.handle else None
        inst.status = "draining" if handle else "stopped"
        if handle:
            cfg = svc.config[inst.slot] if inst.slot < len(svc.config) else {}
            props = cfg.get("additional_properties") or {}
            grace = float(min(90, max(1, int(props.get("termination_grace_period_seconds", 60)))))
            drains.append((inst.id, handle, grace))
            add_event(s, svc.id, svc.project_id, f"Instance {inst.id} is draining: {why}.")

    def _package(self, s: Session, model_id: str) -> ModelPackage | None:
        """The model's package (health config, runtime), loaded once from the model store."""
        pkg = self._packages.get(model_id)
        if pkg is None:
            model = s.get(Model, model_id)
            if model is None or not model.store_path:
                return None
            pkg = self._packages[model_id] = load_package(Path(model.store_path))
        return pkg

    def _spec(self, s: Session, svc: Service, inst: Instance, cfg: dict[str, Any]) -> InstanceSpec | None:
        model = s.get(Model, inst.model_id)
        if model is None or not model.store_path:
            inst.status, inst.message = "failed", f"Model {inst.model_id} is gone from the model store."
            return None
        try:
            pkg = self._package(s, model.id)
        except Exception as exc:  # the package was valid at import; report whatever broke it since
            inst.status, inst.message = "failed", f"Model package unreadable: {exc}"
            return None
        assert pkg is not None
        props = cfg.get("additional_properties") or {}
        grace = min(90, int(props.get("termination_grace_period_seconds", 60)))
        env = {
            "PYTHONUNBUFFERED": "1",
            **pkg.instance_env(),
            **(cfg.get("envs") or {}),
            "MODELPORT_GRACE_S": str(grace),
            # The names users registered, for protocols that address a model by name (V2).
            "MODELPORT_MODEL_NAME": model.name,
            "MODELPORT_MODEL_VERSION": model.version,
        }
        if pkg.runtime_kind == "llm":
            # Threads per engine from the flavor, so several instances don't oversubscribe the cores.
            cpu, _mem = resources(cfg["specification"], cfg.get("custom_spec"))
            env.setdefault("MODELPORT_LLM_THREADS", str(max(1, int(cpu))))
        return InstanceSpec(
            instance_id=inst.id,
            argv=pkg.instance_argv(),
            env=env,
            cwd=str(pkg.model_dir),
            log_dir=self.settings.logs_dir / svc.id,
            host=self.settings.instance_host,
        )

    async def _start(self, instance_id: str, spec: InstanceSpec) -> None:
        try:
            handle = await self.backend.start(spec)
        except Exception as exc:
            log.exception("starting %s failed", instance_id)
            await asyncio.to_thread(self._record_start_error, instance_id, str(exc))
            return
        await asyncio.to_thread(self._record_started, instance_id, handle)

    def _record_started(self, instance_id: str, handle: InstanceHandle) -> None:
        with self.store.session() as s:
            inst = s.get(Instance, instance_id)
            if inst is None or inst.status != "starting":
                # Deleted or drained while starting: don't leak the process.
                asyncio.run_coroutine_threadsafe(self.backend.stop(handle, 5), self._loop)  # type: ignore[arg-type]
                return
            svc = s.get(Service, inst.service_id)
            if inst.started_at is not None:
                inst.restarts += 1
            inst.handle, inst.started_at, inst.exit_code = handle.to_dict(), now_ms(), None
            inst.log_path, inst.ended_at = handle.log_path, None
            self._probes[inst.id] = _Probe()
            if svc:
                add_event(
                    s,
                    svc.id,
                    svc.project_id,
                    f"Instance {inst.id} started (pid {handle.pid}, port {handle.port}).",
                )

    def _record_start_error(self, instance_id: str, error: str) -> None:
        with self.store.session() as s:
            inst = s.get(Instance, instance_id)
            svc = s.get(Service, inst.service_id) if inst else None
            if inst and svc:
                self._crashed(s, svc, inst, None, None, f"could not be started ({error})")

    def _collect_probes(
        self,
        s: Session,
        svc: Service,
        insts: list[Instance],
        probes: list[tuple[str, InstanceHandle, HealthConfig, bool]],
    ) -> None:
        now = time.monotonic()
        for inst in insts:
            if inst.status not in ("starting", "ready", "notReady") or not inst.handle:
                continue
            try:
                pkg = self._package(s, inst.model_id)
            except Exception:
                pkg = None
            health = pkg.health if pkg else HealthConfig()
            st = self._probes.setdefault(inst.id, _Probe())
            if inst.status == "starting":
                cfg = svc.config[inst.slot] if inst.slot < len(svc.config) else {}
                timeout_s = cfg.get("deploy_timeout_in_seconds") or self.settings.deploy_timeout_s
                age = (now_ms() - (inst.started_at or now_ms())) / 1000
                if age > timeout_s:
                    handle = InstanceHandle.from_dict(inst.handle)
                    self._crashed(s, svc, inst, handle, None, f"did not become ready within {timeout_s} s")
                    inst.status = "failed"
                    asyncio.get_running_loop().create_task(self.backend.stop(handle, 0))
                    continue
                if age < health.initial_delay_seconds:
                    continue
            elif now < st.next_at:
                continue
            probes.append((inst.id, InstanceHandle.from_dict(inst.handle), health, inst.status == "starting"))

    async def _probe(self, instance_id: str, handle: InstanceHandle, health: HealthConfig, starting: bool) -> None:
        result = await self.prober.probe(handle.host, handle.port, health)
        st = self._probes.setdefault(instance_id, _Probe())
        st.next_at = time.monotonic() + (0 if starting else health.period_seconds)
        if starting and not result.ok:
            return  # bounded by the deploy timeout, not the failure threshold
        st.failures = 0 if result.ok else st.failures + 1
        await asyncio.to_thread(self._record_probe, instance_id, handle, health, result, st.failures)

    def _record_probe(
        self,
        instance_id: str,
        handle: InstanceHandle,
        health: HealthConfig,
        result: ProbeResult,
        failures: int,
    ) -> None:
        with self.store.session() as s:
            inst = s.get(Instance, instance_id)
            if inst is None or inst.handle is None or inst.handle.get("pid") != handle.pid:
                return
            svc = s.get(Service, inst.service_id)
            if svc is None:
                return
            if result.ok and inst.status != "ready":
                inst.status, inst.ready_at, inst.start_failures, inst.message = "ready", now_ms(), 0, None
                add_event(s, svc.id, svc.project_id, f"Instance {inst.id} is ready.")
            elif not result.ok and inst.status == "ready" and failures >= 1:
                inst.status = "notReady"
                inst.message = f"Health check failed: {result.detail}"
                self.gateway.post(self.gateway.endpoint_down, inst.id)
                add_event(
                    s,
                    svc.id,
                    svc.project_id,
                    f"Instance {inst.id} is not ready: {result.detail}.",
                    abnormal=True,
                )
            elif not result.ok and failures >= health.failure_threshold:
                # Hung or broken for good: replace it (the crash path restarts it with back-off).
                asyncio.run_coroutine_threadsafe(self.backend.stop(handle, 5), self._loop)  # type: ignore[arg-type]
                self._crashed(s, svc, inst, handle, None, f"failed {failures} health checks ({result.detail})")
            elif result.ok and inst.status == "notReady":
                inst.status, inst.message = "ready", None
                add_event(s, svc.id, svc.project_id, f"Instance {inst.id} is ready again.")

    async def _drain(self, instance_id: str, handle: InstanceHandle | None, grace: float) -> None:
        """Out of the route table already: wait for in-flight requests, then SIGTERM (kill after grace)."""
        try:
            deadline = time.monotonic() + grace
            if self._routes_applied is not None:
                # The gateway must have stopped choosing this instance before in-flight counts mean anything.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(self._routes_applied), 5)
            while handle and time.monotonic() < deadline and self.gateway.inflight(instance_id) > 0:
                await asyncio.sleep(0.05)
            if handle:
                await self.backend.stop(handle, max(1.0, deadline - time.monotonic()))
            await asyncio.to_thread(self._record_stopped, instance_id)
        finally:
            self._stopping.pop(instance_id, None)
            self.wake()

    def _record_stopped(self, instance_id: str) -> None:
        with self.store.session() as s:
            inst = s.get(Instance, instance_id)
            if inst is not None:
                inst.status, inst.handle, inst.ended_at = "stopped", None, now_ms()
                svc = s.get(Service, inst.service_id)
                if svc:
                    add_event(s, svc.id, svc.project_id, f"Instance {inst.id} stopped.")
        self._probes.pop(instance_id, None)

    def _update_status(self, s: Session, svc: Service, insts: list[Instance]) -> None:
        if svc not in s:  # deleted this tick
            return
        wanted = [(c["revision"], c["instance_count"]) for c in svc.config]
        views = [InstanceView(i.slot, i.revision, i.status, i.message) for i in insts]
        state = service_state(svc.status, svc.desired, wanted, views)
        if state.status != svc.status:
            old = svc.status
            svc.status, svc.transition_at = state.status, now_ms()
            abnormal = state.status in ("failed", "concerning")
            reason = f": {state.error_msg}" if state.error_msg and abnormal else ""
            add_event(
                s,
                svc.id,
                svc.project_id,
                f"Service {svc.name} is {state.status} (was {old}){reason}.",
                abnormal=abnormal,
            )
            if state.status == "running":
                self._finish_update(s, svc, "SUCCESS")
            elif state.status == "failed":
                self._finish_update(s, svc, "FAIL", state.error_msg)
        svc.progress = state.progress
        error = state.error_msg or svc.extra.get("update_error")
        if error != svc.error_msg and (error or state.status in ("running", "stopped")):
            svc.error_msg = error

    def _publish_routes(self, services: list[Service], by_service: dict[str, list[Instance]]) -> None:
        from modelport.gateway.routes import Endpoint, RouteTable, ServiceRoute, VersionRoute

        models: dict[str, tuple[str, str]] = {}
        routes = {}
        for svc in services:
            if svc.desired == "deleted" or svc.infer_type == "batch":  # batch: no gateway traffic
                continue
            ready = [i for i in by_service.get(svc.id, []) if i.status == "ready" and i.handle]
            versions = []
            for slot, cfg in enumerate(svc.config):
                in_slot = [i for i in ready if i.slot == slot]
                by_model: dict[str, list[Instance]] = {}
                for inst in in_slot:
                    by_model.setdefault(inst.model_id, []).append(inst)
                for model_id, group in by_model.items():
                    if model_id not in models:
                        models[model_id] = self._model_label(model_id)
                    name, version = models[model_id]
                    # During a roll a slot holds two versions: its weight is shared by instance count.
                    weight = round(int(cfg["weight"]) * 100 * len(group) / len(in_slot))
                    endpoints = tuple(
                        Endpoint(i.id, i.handle["host"], i.handle["port"])
                        for i in sorted(group, key=lambda i: i.id)  # type: ignore[index]
                    )
                    versions.append(VersionRoute(f"{slot}:{model_id}", model_id, name, version, weight, endpoints))
            kind = self._kind(svc)
            default_policy = "PREFIX_AFFINITY" if kind == "llm" else "LEAST_CONNECTIONS"
            routes[svc.id] = ServiceRoute(
                svc.id,
                svc.project_id,
                svc.status,
                tuple(versions),
                policy=svc.extra.get("load_balancer_policy") or default_policy,
                kind=kind,
                websocket=bool(svc.additional_properties.get("websocket_upgrade")),
                **route_fields(svc.additional_properties),  # auth mode and limits (issue 6)
            )
        sig = tuple(sorted(routes.items()))  # every field: a limit or auth-mode change republishes too
        if sig != self._routes_sig:
            self._routes_sig = sig
            self._route_revision += 1
            from types import MappingProxyType

            table = RouteTable(self._route_revision, MappingProxyType(routes))
            self._routes_applied = self.gateway.post(self.gateway.set_routes, table)

    def _export_metrics(self, services: list[Service], by_service: dict[str, list[Instance]]) -> None:
        seen = set()
        for svc in services:
            counts: dict[str, int] = dict.fromkeys(_INSTANCE_STATES, 0)
            for inst in by_service.get(svc.id, []):
                if inst.status in counts:
                    counts[inst.status] += 1
            for state, n in counts.items():
                INSTANCES.labels(svc.id, state).set(n)
                seen.add((svc.id, state))
        for labels in self._metric_labels - seen:
            INSTANCES.remove(*labels)
        self._metric_labels = seen

    async def _collect_llm_stats(self) -> None:
        """Summarise the engines of each LLM service into ShowService (`llm_stats`)."""

        def targets() -> dict[str, list[tuple[str, int]]]:
            out: dict[str, list[tuple[str, int]]] = {}
            with self.store.session() as s:
                for svc in s.scalars(select(Service).where(Service.desired == "running")):
                    if self._kind(svc) != "llm":
                        continue
                    insts = s.scalars(select(Instance).where(Instance.service_id == svc.id, Instance.status == "ready"))
                    out[svc.id] = [(i.handle["host"], i.handle["port"]) for i in insts if i.handle]
            return out

        wanted = await asyncio.to_thread(targets)
        if not wanted:
            return
        results: dict[str, dict[str, Any]] = {}
        for service_id, endpoints in wanted.items():
            stats = await asyncio.gather(*(self.prober.get_json(h, p, "/v1/engine/stats") for h, p in endpoints))
            results[service_id] = _summarise_llm([x for x in stats if isinstance(x, dict)])

        def store() -> None:
            with self.store.session() as s:
                for service_id, summary in results.items():
                    svc = s.get(Service, service_id)
                    if svc is not None:
                        svc.extra = {**svc.extra, "llm_stats": summary}

        await asyncio.to_thread(store)

    def _kind(self, svc: Service) -> str:
        """Runtime of the service's models (`llm` if any config runs the LLM engine)."""
        kinds = {self._packages[c["model_id"]].runtime_kind for c in svc.config if c["model_id"] in self._packages}
        return "llm" if "llm" in kinds else ("command" if kinds == {"command"} else "python")

    def _model_label(self, model_id: str) -> tuple[str, str]:
        with self.store.session() as s:
            m = s.get(Model, model_id)
            return (m.name, m.version) if m else ("?", "?")

    def _flush_stats(self, s: Session) -> None:
        now = time.monotonic()
        if now - self._last_stats < 2.0:
            return
        self._last_stats = now
        stats = self.gateway.take_stats()
        for service_id, (calls, failures) in stats.items():
            svc = s.get(Service, service_id)
            if svc is not None:
                svc.invocation_times += calls
                svc.failed_times += failures

    def _expire_instances(self) -> None:
        """Forget instances that ended more than the retention period ago, with their log files."""
        cutoff = now_ms() - int(self.settings.log_retention_hours * 3_600_000)
        with self.store.session() as s:
            old = s.scalars(
                select(Instance).where(Instance.status.in_(("stopped", "failed")), Instance.ended_at < cutoff)
            ).all()
            for inst in old:
                if inst.log_path:
                    for path in Path(inst.log_path).parent.glob(Path(inst.log_path).name + "*"):
                        path.unlink(missing_ok=True)
                s.delete(inst)

    def _maintain_logs(self) -> None:
        with self.store.session() as s:
            handles = [
                InstanceHandle.from_dict(i.handle)
                for i in s.scalars(select(Instance).where(Instance.status.in_(LIVE)))
                if i.handle
            ]
        for h in handles:
            try:
                self.backend.maintain(h)
            except OSError:
                log.warning("log rotation failed for %s", h.instance_id)


def _summarise_llm(stats: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {key: sum(int(x.get(key) or 0) for x in stats) for key in _LLM_SUMS}
    queried, used, total = out["prefix_cache_queried_tokens"], out["kv_blocks_used"], out["kv_blocks_total"]
    out["prefix_cache_hit_rate"] = round(out["prefix_cache_hit_tokens"] / queried, 4) if queried else 0.0
    out["kv_usage"] = round(used / total, 4) if total else 0.0
    for key in ("mean_ttft_s", "mean_tpot_s"):
        values = [x[key] for x in stats if x.get(key) is not None]
        out[key] = round(sum(values) / len(values), 6) if values else None
    out["instances_reporting"] = len(stats)
    out["updated_at"] = now_ms()
    return out


def _done(value: Any) -> concurrent.futures.Future[Any]:
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    fut.set_result(value)
    return fut


def _count(value: Any, total: int, at_least: int) -> int:
    """max_surge / max_unavailable: < 1 is a fraction of the instances, otherwise a count (spec §1.2)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return at_least
    n = int(v * total + 0.999) if 0 < v < 1 else int(v)
    return max(at_least, n)
