"""The batch checkpoint in the store: committed records, the job's counters, its events and its end.

Invariant: a `batch_records` row exists exactly for each record whose outcome is final and whose
output is durable (a file-mode result object is written before its row is committed; a CSV row's
result line is in the row itself). Each key is committed at most once: `commit` drops keys that
are already there, and the runner is the only writer of these rows. Counters in `batch_jobs` move
in the same transaction as the rows they count.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.batch.sources import Key, Result
from modelport.store.db import Store
from modelport.store.events import add_event
from modelport.store.tables import BatchJob, BatchRecord, Service
from modelport.timeutil import now_ms

MILESTONES = (25, 50, 75)
_RECORDS = BatchRecord.__table__  # Core, not ORM: these paths touch every record
_IN_CHUNK = 500


@dataclass(frozen=True)
class Progress:
    total: int | None
    succeeded: int
    failed: int

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed


def start(store: Store, service_id: str) -> Progress:
    """The job of a service, created on first run; a failed job is resumed where it stopped."""
    with store.session() as s:
        job = s.get(BatchJob, service_id)
        now = now_ms()
        if job is None:
            job = BatchJob(
                service_id=service_id, state="running", succeeded=0, failed=0, rate=0.0, milestone=0, updated_at=now
            )
            s.add(job)
        elif job.state == "failed":
            job.state, job.message, job.finished_at = "running", None, None
        if job.started_at is None:
            job.started_at = now
            svc = s.get(Service, service_id)
            if svc is not None:
                add_event(s, svc.id, svc.project_id, f"Batch job of {svc.name} started.")
        return Progress(job.total, job.succeeded, job.failed)


def done_keys(store: Store, service_id: str, keys: list[Key]) -> set[Key]:
    if not keys:
        return set()
    with store.session() as s:
        return _existing(s, service_id, keys)


def _existing(s: Session, service_id: str, keys: list[Key]) -> set[Key]:
    found: set[Key] = set()
    t = _RECORDS.c
    for i in range(0, len(keys), _IN_CHUNK):
        part = keys[i : i + _IN_CHUNK]
        sources = {k[0] for k in part}
        rows = [k[1] for k in part]
        where = [t.service_id == service_id]
        if len(sources) == 1:  # rows of one CSV input: a range scan of the primary key
            where += [t.source == part[0][0], t.row.between(min(rows), max(rows))]
        else:
            where += [t.source.in_(sources), t.row.in_(set(rows))]
        wanted = set(part)
        found.update(k for k in s.execute(select(t.source, t.row).where(*where)).tuples() if k in wanted)
    return found


def commit(
    store: Store,
    service_id: str,
    results: list[Result],
    rate: float | None,
    total: int | None,
    dedupe: bool = True,
) -> Progress | None:
    """Make results final (their outputs are already written). None if the job is gone.

    `dedupe=False` when no key can come twice (a directory or CSV files, filtered against the
    checkpoint as they are read); a manifest may list a source twice. Either way the primary key
    refuses a second commit of a key, which fails the flush rather than double a record.
    """
    with store.session() as s:
        job = s.get(BatchJob, service_id)
        if job is None or job.state != "running":
            return None
        unique: dict[Key, Result] = {}
        for r in results:
            unique.setdefault((r.source, r.row), r)
        if dedupe:
            for key in _existing(s, service_id, list(unique)):
                del unique[key]
        rows = [
            (service_id, r.source, r.row, r.ok, r.output if isinstance(r.output, str) else None, r.error)
            for r in unique.values()
        ]
        if rows:
            _insert(s, rows)
        ok = sum(1 for r in unique.values() if r.ok)
        job.succeeded += ok
        job.failed += len(rows) - ok
        if total is not None:
            job.total = total
        if rate is not None:
            job.rate = rate
        job.updated_at = now_ms()
        _milestones(s, job)
        return Progress(job.total, job.succeeded, job.failed)


def _insert(s: Session, rows: list[tuple[Any, ...]]) -> None:
    """One executemany straight to the driver: the per-row cost of a Core insert is most of a commit."""
    mark = "?" if s.get_bind().dialect.paramstyle == "qmark" else "%s"
    marks = ", ".join([mark] * 6)
    sql = f'INSERT INTO batch_records (service_id, source, "row", ok, output, error) VALUES ({marks})'
    s.connection().exec_driver_sql(sql, rows)


def _milestones(s: Session, job: BatchJob) -> None:
    if not job.total:
        return
    pct = 100 * (job.succeeded + job.failed) // job.total
    reached = [m for m in MILESTONES if job.milestone < m <= pct]
    if not reached:
        return
    job.milestone = reached[-1]
    svc = s.get(Service, job.service_id)
    if svc is not None:
        add_event(
            s,
            svc.id,
            svc.project_id,
            f"Batch job {reached[-1]}% done: {job.succeeded} succeeded, {job.failed} failed of {job.total}.",
        )


def records(store: Store, service_id: str) -> Iterator[tuple[str, int, bool, str | None, str | None]]:
    """Every committed record in (source, row) order, streamed from the store."""
    with store.session() as s:
        t = _RECORDS.c
        q = (
            select(t.source, t.row, t.ok, t.output, t.error)
            .where(t.service_id == service_id)
            .order_by(t.source, t.row)
            .execution_options(yield_per=2000)
        )
        yield from s.execute(q).tuples()


def finish(store: Store, service_id: str, ok: bool, message: str) -> None:
    """End the job: the service goes `finished` (or `failed` with `message`) and its instances stop.

    A failed job keeps its checkpoint, so `PUT status=running` resumes it.
    """
    with store.session() as s:
        job = s.get(BatchJob, service_id)
        svc = s.get(Service, service_id)
        if job is None or svc is None or svc.desired != "running":
            return
        now = now_ms()
        job.state, job.message, job.finished_at, job.updated_at = ("finished" if ok else "failed"), message, now, now
        if ok:
            job.total, job.milestone = job.succeeded + job.failed, 100
        # The batch part ends what it started: the orchestrator drains the instances of a service
        # whose desired state is no longer `running` and shows this as its status.
        svc.desired = "finished" if ok else "failed"
        svc.error_msg = None if ok else message
        add_event(s, svc.id, svc.project_id, message, abnormal=not ok)


def progress_fields(s: Session, svc: Service) -> dict[str, Any]:
    """ShowService/ListServices fields of a batch service: `progress` (%), `batch_progress`, times."""
    job = s.get(BatchJob, svc.id)
    if job is None:
        return {"progress": 0, "batch_progress": None, "start_time": None, "finished_time": None}
    processed = job.succeeded + job.failed
    total = job.total
    pct = 100 if job.state == "finished" else (min(99, 100 * processed // total) if total else 0)
    left = (total - processed) if total is not None else None
    eta = round(left / job.rate, 1) if left is not None and job.rate > 0 and job.state == "running" else None
    return {
        "progress": pct,
        "batch_progress": {
            "state": job.state,
            "total": total,
            "processed": processed,
            "succeeded": job.succeeded,
            "failed": job.failed,
            "records_per_second": round(job.rate, 1),
            "eta_seconds": eta,
            "message": job.message,
        },
        "start_time": job.started_at,
        "finished_time": job.finished_at,
    }
