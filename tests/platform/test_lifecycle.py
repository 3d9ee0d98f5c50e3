"""Lifecycle without failed requests: rolls, scaling, refused broken versions, crashes, restarts, logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from tests.conftest import EXAMPLES, make_platform, pid_alive, wait_until
from tests.load import Load

pytestmark = pytest.mark.slow


def _broken_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "echo-broken"
    shutil.copytree(EXAMPLES / "echo", pkg)
    (pkg / "model" / "customize_service.py").write_text("raise ImportError('version 3 is broken on purpose')\n")
    return pkg


def _cfg(model_id: str, count: int) -> list[dict]:
    return [{"model_id": model_id, "weight": 100, "specification": "modelarts.vm.cpu.1u", "instance_count": count}]


def _live(c, sid: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [
        i
        for cfg in c.get_service(sid)["config"]
        for i in cfg["instances"]
        if i["status"] in ("ready", "starting", "draining", "crashed", "notReady")
    ]


def _settled(c, sid: str, model_id: str, count: int):  # type: ignore[no-untyped-def]
    def check():  # type: ignore[no-untyped-def]
        svc = c.get_service(sid)
        insts = [i for cfg in svc["config"] for i in cfg["instances"] if i["status"] != "stopped"]
        ok = (
            svc["status"] == "running"
            and len(insts) == count
            and all(i["status"] == "ready" and i["model_id"] == model_id for i in insts)
        )
        return svc if ok else None

    return check


@pytest.fixture
def lifecycle(tmp_path: Path):  # type: ignore[no-untyped-def]
    p = make_platform(tmp_path, MODELPORT_RECONCILE_INTERVAL_S="0.2")
    p.start()
    try:  # from here on: a failing setup must not leave the platform running
        c = p.client()
        ids = {}
        for version in ("1.0.0", "2.0.0"):
            ids[version] = c.import_model("echo", version, "Custom", EXAMPLES / "echo")
        ids["3.0.0"] = c.import_model("echo", "3.0.0", "Custom", _broken_package(tmp_path))
        for mid in ids.values():
            assert c.wait_model(mid)["model_status"] == "published"
        yield p, c, ids
        c.close()
    finally:
        p.stop()


def test_roll_scale_and_broken_version_under_load(lifecycle) -> None:  # type: ignore[no-untyped-def]
    p, c, ids = lifecycle
    sid = c.create_service({"service_name": "rolling", "infer_type": "real-time", "config": _cfg(ids["1.0.0"], 2)})
    assert c.wait_service(sid, timeout=60)["status"] == "running"
    p.instance_pids()
    load = Load(f"{p.url}/v1/infers/{sid}", c.token(), clients=4, max_requests=20_000, max_seconds=60).start()
    marks: dict[str, float] = {}
    try:
        wait_until(lambda: load.count() > 50, 10, what="load to flow")
        # (a) roll to a new model version
        marks["roll"] = time.monotonic()
        c.update_service(sid, {"config": _cfg(ids["2.0.0"], 2)})
        wait_until(_settled(c, sid, ids["2.0.0"], 2), 60, 0.1, "roll to 2.0.0")
        marks["rolled"] = time.monotonic()
        p.instance_pids()
        # (b) scale 2 -> 4 -> 1
        c.update_service(sid, {"config": _cfg(ids["2.0.0"], 4)})
        wait_until(_settled(c, sid, ids["2.0.0"], 4), 60, 0.1, "scale to 4")
        p.instance_pids()
        c.update_service(sid, {"config": _cfg(ids["2.0.0"], 1)})
        wait_until(_settled(c, sid, ids["2.0.0"], 1), 60, 0.1, "scale to 1")
        # (c) a broken version is refused; the running one keeps serving
        marks["broken"] = time.monotonic()
        c.update_service(sid, {"config": _cfg(ids["3.0.0"], 1)})

        def rolled_back():  # type: ignore[no-untyped-def]
            svc = c.get_service(sid)
            return svc if svc["config"][0]["model_id"] == ids["2.0.0"] and svc["status"] == "running" else None

        svc = wait_until(rolled_back, 60, 0.2, "rollback of the broken version")
        assert "rolled back" in svc["error_msg"] and "broken on purpose" in svc["error_msg"]
        time.sleep(1.0)
    finally:
        results = load.stop()
    p.instance_pids()
    failures = [r for r in results if r.status != 200]
    assert len(results) >= 500, len(results)
    assert not failures, failures[:5]
    # every response came from a version that was supposed to serve at that moment
    for r in results:
        if r.started < marks["roll"]:
            assert r.version == "1.0.0"
        elif r.started > marks["rolled"]:
            assert r.version == "2.0.0", r
        else:
            assert r.version in ("1.0.0", "2.0.0")
    assert not any(r.version == "3.0.0" for r in results)
    events = [e["event_info"] for e in c.events(sid, order="asc")["events"]]
    assert any("draining" in e for e in events) and any("rolled back" in e for e in events)
    history = c.logs(sid, tail=0)["logs"]
    assert [u["result"] for u in history][:2] == ["FAIL", "SUCCESS"]


def test_kill9_under_load_fails_at_most_the_in_flight(lifecycle) -> None:  # type: ignore[no-untyped-def]
    p, c, ids = lifecycle
    sid = c.create_service({"service_name": "crashy", "infer_type": "real-time", "config": _cfg(ids["1.0.0"], 2)})
    assert c.wait_service(sid, timeout=60)["status"] == "running"
    victim = c.get_service(sid)["config"][0]["instances"][0]
    p.instance_pids()
    load = Load(f"{p.url}/v1/infers/{sid}", c.token(), clients=4, max_seconds=30).start()
    try:
        wait_until(lambda: load.count() > 100, 10, what="load to flow")
        os.kill(victim["pid"], signal.SIGKILL)
        svc = wait_until(_settled(c, sid, ids["1.0.0"], 2), 60, 0.1, "restart after kill -9")
        time.sleep(0.5)
    finally:
        results = load.stop()
    p.instance_pids()
    failures = [r for r in results if r.status != 200]
    assert len(failures) <= 4, failures  # at most the requests in flight (4 clients)
    assert victim["instance_id"] in {i["instance_id"] for i in svc["config"][0]["instances"]}
    events = [e["event_info"] for e in c.events(sid)["events"]]
    assert any(victim["instance_id"] in e and "SIGKILL" in e for e in events), events


def test_platform_crash_and_restart_readopts_instances(lifecycle) -> None:  # type: ignore[no-untyped-def]
    p, c, ids = lifecycle
    sid = c.create_service({"service_name": "survivor", "infer_type": "real-time", "config": _cfg(ids["1.0.0"], 2)})
    assert c.wait_service(sid, timeout=60)["status"] == "running"
    before = sorted(i["pid"] for i in _live(c, sid))
    p.instance_pids()
    load = Load(f"{p.url}/v1/infers/{sid}", c.token(), clients=2, max_seconds=30).start()
    try:
        wait_until(lambda: load.count() > 50, 10, what="load to flow")
        p.kill9()
        assert all(pid_alive(pid) for pid in before), "instances must survive a control-plane crash"
        p.start()
        c2 = p.client()
        svc = wait_until(_settled(c2, sid, ids["1.0.0"], 2), 60, 0.1, "re-adoption")
        back = time.monotonic()
        wait_until(lambda: sum(r.started > back + 0.5 for r in list(load.results)) > 50, 15, what="load to flow again")
    finally:
        results = load.stop()
    after = sorted(i["pid"] for cfg in svc["config"] for i in cfg["instances"] if i["status"] == "ready")
    assert after == before, "instances were replaced instead of re-adopted"
    # no duplicates: exactly two instances (one log shim each) of this service exist
    ours = subprocess.run(["pgrep", "-f", "modelport.backends.logshim"], capture_output=True, text=True).stdout.split()
    mine = [int(x) for x in ours if _env_has(int(x), sid, c2)]
    assert len(mine) == 2, mine
    # after the restart every request succeeds again
    # once the platform is back, every request succeeds again
    late = [r for r in results if r.started > back + 0.5]
    assert len(late) > 50 and all(r.status == 200 for r in late), [r for r in late if r.status != 200][:3]
    c2.close()


def _env_has(pid: int, sid: str, c) -> bool:  # type: ignore[no-untyped-def]
    ids = {i["instance_id"] for i in _live(c, sid)}
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(e.startswith(b"MODELPORT_INSTANCE_ID=") and e.split(b"=", 1)[1].decode() in ids for e in env)


def test_logs_tail_since_follow_and_replaced_instances(tmp_path: Path) -> None:
    p = make_platform(tmp_path, MODELPORT_RECONCILE_INTERVAL_S="0.2")
    p.start()
    c = p.client()
    try:
        mid = c.import_model("cmd-echo", "1.0.0", "Image", EXAMPLES / "command-echo")
        assert c.wait_model(mid)["model_status"] == "published"
        sid = c.create_service({"service_name": "logged", "infer_type": "real-time", "config": _cfg(mid, 1)})
        assert c.wait_service(sid, timeout=60)["status"] == "running"
        first = _live(c, sid)[0]
        p.instance_pids()
        c.predict(sid, {"n": 1})
        data = wait_until(
            lambda: (d := c.logs(sid)) and any("POST /" in e["message"] for e in d["instance_logs"]) and d,
            10,
            what="request log line",
        )
        assert data["logs"][0]["result"] == "SUCCESS"  # spec's update history stays in logs[]
        assert all(e["instance_id"] == first["instance_id"] and e["time"] for e in data["instance_logs"])
        assert len(c.logs(sid, tail=2)["instance_logs"]) == 2
        assert c.logs(sid, since=str(int(time.time() * 1000) + 60_000))["instance_logs"] == []
        # follow: a new request's log line arrives while streaming
        token = c.token()
        url = f"{p.url}/v1/{c.project_id}/services/{sid}/logs"
        got: list[dict] = []
        with httpx.stream(
            "GET", url, params={"follow": "true", "tail": 0}, headers={"X-Auth-Token": token}, timeout=20
        ) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            c.predict(sid, {"n": 2})
            deadline = time.monotonic() + 10
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
                    if any("POST /" in g["message"] for g in got) or time.monotonic() > deadline:
                        break
        assert any("POST /" in g["message"] for g in got)
        # a replaced instance's logs stay readable
        os.kill(first["pid"], signal.SIGKILL)
        wait_until(
            lambda: c.get_service(sid)["status"] == "running" and _live(c, sid)[0]["pid"] != first["pid"],
            30,
            what="restart",
        )
        old = c.logs(sid, instance_id=[first["instance_id"]])["instance_logs"]
        assert any("POST /" in e["message"] for e in old)
        cli = p.cli("service", "logs", "logged", "--tail", "5", check=True)
        assert first["instance_id"] in cli.stdout
    finally:
        c.close()
        p.stop()


def test_auto_stop_schedule_survives_restart(tmp_path: Path) -> None:
    p = make_platform(tmp_path, MODELPORT_RECONCILE_INTERVAL_S="0.2")
    p.start()
    c = p.client()
    try:
        mid = c.import_model("echo", "1.0.0", "Custom", EXAMPLES / "echo")
        assert c.wait_model(mid)["model_status"] == "published"
        body = {"service_name": "shortlived", "infer_type": "real-time", "config": _cfg(mid, 1)}
        body["schedule"] = [{"type": "stop", "time_unit": "MINUTES", "duration": 1}]
        t0 = int(time.time() * 1000)
        sid = c.create_service(body)
        svc = c.wait_service(sid, timeout=60)
        assert svc["status"] == "running"
        assert abs(svc["due_time"] - (t0 + 60_000)) < 5_000
        p.instance_pids()
        c.close()
        p.stop()
        p.start()
        c = p.client()
        assert c.get_service(sid)["due_time"] == svc["due_time"]
        stopped = c.wait_service(sid, ("stopped",), timeout=90)
        assert stopped["status"] == "stopped"
        assert int(time.time() * 1000) >= svc["due_time"]
        events = [e["event_info"] for e in c.events(sid)["events"]]
        assert any("auto-stop" in e for e in events)
    finally:
        c.close()
        p.stop()
