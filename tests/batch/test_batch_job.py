"""A job run against a scripted fake instance: which failures are retried, and what gets committed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelport.batch import checkpoint
from modelport.batch.calls import Deadlines, Transient, call, json_request
from modelport.batch.job import JobRun
from modelport.batch.settings import BatchSettings
from modelport.batch.sources import Result
from modelport.batch.spec import job_spec
from modelport.gateway.upstream import Pool
from modelport.store.db import Store
from modelport.store.tables import BatchRecord, Project, Service

RULE = {"type": "object", "properties": {"id": {"type": "integer", "index": 0}, "tag": {"type": "string", "index": 1}}}


class FakeInstance:
    """HTTP/1.1 keep-alive server; the row's `tag` says how to answer: ok, flaky (503 once),
    down (always 503), bad (500), drop (close without answering, once), hang (answer after 5 s)."""

    def __init__(self) -> None:
        self.seen: Counter[int] = Counter()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
                req = json.loads(await reader.readexactly(length))
                self.seen[req["id"]] += 1
                first = self.seen[req["id"]] == 1
                tag = req["tag"]
                if tag == "drop" and first:
                    writer.close()
                    return
                if tag == "hang":
                    await asyncio.sleep(5)
                status = 503 if tag == "down" or (tag == "flaky" and first) else 500 if tag == "bad" else 200
                body = json.dumps({"echo": req}).encode()
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%b" % (status, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def instance() -> AsyncIterator[FakeInstance]:
    fake = FakeInstance()
    await fake.start()
    yield fake
    assert fake.server is not None
    fake.server.close()


def _store(url: str) -> tuple[Store, str]:
    store = Store(url)
    store.migrate()
    sid = str(uuid.uuid4())
    with store.session() as s:
        s.add(Project(id="p", name="p", created_at=0))
        s.flush()
        s.add(
            Service(
                id=sid, project_id="p", owner="me", name="job", infer_type="batch", desired="running",
                status="running", config=[], publish_at=0, update_time=0, transition_at=0,
            )
        )  # fmt: skip
    return store, sid


async def test_retries_transient_failures_only(tmp_path: Path, db_url: str, instance: FakeInstance) -> None:
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    tags = ["ok", "flaky", "down", "bad", "drop", "ok"]
    (src / "t.csv").write_text("".join(f"{i},{t}\n" for i, t in enumerate(tags)))
    store, sid = _store(db_url)
    settings = BatchSettings(batch_retries=2, batch_retry_backoff_s=0.01, batch_flush_interval_s=0.05)
    cfg = {"src_path": str(src), "dest_path": str(dest), "req_uri": "/", "mapping_type": "csv", "mapping_rule": RULE}
    pool = Pool()
    run = JobRun(store, settings, job_spec(sid, cfg, None, settings), pool)
    task = asyncio.create_task(run.run())
    await asyncio.sleep(0)
    run.set_instances({"i1": ("127.0.0.1", instance.port)})
    await asyncio.wait_for(task, 20)
    await pool.aclose()

    with store.session() as s:
        rows = {r.row: r for r in s.query(BatchRecord).filter_by(service_id=sid)}
        svc = s.get(Service, sid)
        assert svc is not None and svc.desired == "finished"
    assert sorted(rows) == list(range(6))
    assert [rows[i].ok for i in range(6)] == [True, True, False, False, True, True]
    assert "gave up after 3 attempts" in (rows[2].error or "") and "503" in (rows[2].error or "")
    assert "answered HTTP 500" in (rows[3].error or "")
    # flaky and drop were retried once; the model error and the successes were called once; down 1 + 2 retries.
    assert instance.seen == Counter({0: 1, 1: 2, 2: 3, 3: 1, 4: 2, 5: 1})
    lines = (dest / "infer-result/t.csv_result.txt").read_text().splitlines()
    assert json.loads(lines[1]) == {"echo": {"id": 1, "tag": "flaky"}}
    assert len(lines) == 6
    progress = await asyncio.to_thread(checkpoint.start, store, sid)  # finished job: counters stay
    assert (progress.succeeded, progress.failed) == (4, 2)
    store.dispose()


async def test_call_classification(instance: FakeInstance) -> None:
    pool, deadlines = Pool(), Deadlines(5)
    head, body = json_request("/", json.dumps({"id": 100, "tag": "bad"}).encode())
    reply = await call(pool, "127.0.0.1", instance.port, head, body, deadlines)
    assert reply.status == 500
    head, body = json_request("/", json.dumps({"id": 101, "tag": "down"}).encode())
    with pytest.raises(Transient) as err:
        await call(pool, "127.0.0.1", instance.port, head, body, deadlines)
    assert err.value.sent and "503" in str(err.value)
    with pytest.raises(Transient) as err:
        await call(pool, "127.0.0.1", 1, head, body, deadlines)  # nothing listens on port 1
    assert not err.value.sent
    head, body = json_request("/", json.dumps({"id": 102, "tag": "hang"}).encode())
    with pytest.raises(Transient) as err:
        await call(pool, "127.0.0.1", instance.port, head, body, Deadlines(0.2))
    assert err.value.sent and "did not answer within 0.2 s" in str(err.value)
    deadlines.close()
    await pool.aclose()


def test_checkpoint_commits_each_key_once(db_url: str) -> None:
    """On SQLite and PostgreSQL: duplicates are dropped, done keys are found, records come out in order."""
    store, sid = _store(db_url)
    checkpoint.start(store, sid)
    ok = [Result("s3://b/t.csv", i, "t.csv", True, f'{{"i":{i}}}') for i in (2, 0, 1)]
    failed = Result("/in/x.png", -1, "x.png", False, error="model said no")
    first = checkpoint.commit(store, sid, [*ok, failed, ok[0]], 10.0, 5)
    assert first is not None and (first.succeeded, first.failed, first.total) == (3, 1, 5)
    again = checkpoint.commit(store, sid, [ok[1], Result("s3://b/t.csv", 3, "t.csv", True, "{}")], None, None)
    assert again is not None and (again.succeeded, again.failed) == (4, 1)
    keys = [("s3://b/t.csv", i) for i in range(6)] + [("/in/x.png", -1), ("/in/y.png", -1)]
    assert checkpoint.done_keys(store, sid, keys) == {("s3://b/t.csv", i) for i in range(4)} | {("/in/x.png", -1)}
    rows = list(checkpoint.records(store, sid))
    assert [(r[0], r[1]) for r in rows] == [("/in/x.png", -1)] + [("s3://b/t.csv", i) for i in range(4)]
    assert rows[1][3] == '{"i":0}' and rows[0][4] == "model said no"
    store.dispose()
