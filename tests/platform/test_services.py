"""Real-time services end to end: deploy, weighted split, crash restart, stop/start, failures, CLI."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
from tests.conftest import EXAMPLES, PlatformProc, pid_alive, wait_until

pytestmark = pytest.mark.slow


def _deploy(c, name: str, configs: list[tuple[str, int, int]], spec: str = "modelarts.vm.cpu.1u") -> str:  # type: ignore[no-untyped-def]
    body = {
        "service_name": name,
        "infer_type": "real-time",
        "config": [{"model_id": m, "weight": w, "specification": spec, "instance_count": n} for m, w, n in configs],
    }
    return c.create_service(body)


def _import(c, name: str, version: str, path: Path, model_type: str) -> str:  # type: ignore[no-untyped-def]
    model_id = c.import_model(name, version, model_type, path)
    model = c.wait_model(model_id)
    assert model["model_status"] == "published", model
    assert model["model_size"] > 0 and len(model["model_sha256"]) == 64
    return model_id


@pytest.fixture(scope="module")
def digits(shared_platform: PlatformProc, digits_packages: dict[str, Path]):  # type: ignore[no-untyped-def]
    c = shared_platform.client()
    v1 = _import(c, "digits", "1.0.0", digits_packages["1.0.0"], "Scikit_Learn")
    v2 = _import(c, "digits", "2.0.0", digits_packages["2.0.0"], "Scikit_Learn")
    sid = _deploy(c, "digits", [(v1, 70, 1), (v2, 30, 1)])
    svc = c.wait_service(sid, timeout=120)
    assert svc["status"] == "running", svc
    yield shared_platform, c, sid
    c.close()


def _events(c, sid: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e["event_info"] for e in c.events(sid, order="asc")["events"]]


def test_weighted_split_and_correct_answers(digits) -> None:  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_digits

    p, c, sid = digits
    data = load_digits()
    token = c.token()
    counts: dict[str, int] = {}
    correct = 0
    with httpx.Client(base_url=p.url, headers={"X-Auth-Token": token}, timeout=30) as h:
        for i in range(1000):
            idx = i % 50
            resp = h.post(f"/v1/infers/{sid}", json={"images": [data.data[idx].tolist()]})
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-request-id"]
            version = resp.headers["x-modelport-version"]
            counts[version] = counts.get(version, 0) + 1
            correct += resp.json()["predicted_label"] == str(data.target[idx])
    assert abs(counts["1.0.0"] / 10 - 70) <= 3 and abs(counts["2.0.0"] / 10 - 30) <= 3, counts
    assert correct >= 950
    svc = wait_until(lambda: (s := c.get_service(sid))["invocation_times"] >= 1000 and s, 15, what="invocation count")
    assert svc["failed_times"] == 0
    metrics = httpx.get(f"{p.url}/metrics").text
    assert f'service_id="{sid}"' in metrics
    assert f'modelport_instances{{service_id="{sid}",state="ready"}} 2.0' in metrics


def test_multipart_image_upload(digits) -> None:  # type: ignore[no-untyped-def]
    import io

    from PIL import Image
    from sklearn.datasets import load_digits

    _p, c, sid = digits
    data = load_digits()
    pixels = (255 - data.data[3].reshape(8, 8) * 255 / 16).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").resize((32, 32)).save(buf, format="PNG")
    out = c.predict(sid, files={"images": ("d.png", buf.getvalue(), "image/png")})
    assert out["predicted_label"] == str(data.target[3])
    assert len(out["scores"]) == 10


def test_show_service_shape(digits) -> None:  # type: ignore[no-untyped-def]
    p, c, sid = digits
    svc = c.get_service(sid)
    assert svc["access_address"] == f"{p.url}/v1/infers/{sid}"
    assert [cfg["model_version"] for cfg in svc["config"]] == ["1.0.0", "2.0.0"]
    for cfg in svc["config"]:
        assert cfg["status"] == "running"
        assert [i["status"] for i in cfg["instances"]] == ["ready"]
    listed = c.list_services(service_name="digits")["services"]
    assert listed[0]["service_id"] == sid and listed[0]["status"] == "running"


def test_kill9_instance_is_restarted(digits) -> None:  # type: ignore[no-untyped-def]
    _p, c, sid = digits
    svc = c.get_service(sid)
    inst = svc["config"][0]["instances"][0]
    os.kill(inst["pid"], signal.SIGKILL)

    def back() -> dict | None:
        s = c.get_service(sid)
        i = s["config"][0]["instances"][0]
        return s if s["status"] == "running" and i["pid"] != inst["pid"] and i["status"] == "ready" else None

    svc = wait_until(back, 60, 0.2, "instance restart")
    assert svc["config"][0]["instances"][0]["restarts"] >= 1
    events = _events(c, sid)
    assert any(inst["instance_id"] in e and "killed by signal SIGKILL" in e for e in events) or any(
        inst["instance_id"] in e and "-9" in e for e in events
    ), events
    assert any("concerning" in e for e in events)
    assert not pid_alive(inst["pid"])


def test_stop_answers_503_at_once_and_start_again(digits) -> None:  # type: ignore[no-untyped-def]
    p, c, sid = digits
    pids = [i["pid"] for cfg in c.get_service(sid)["config"] for i in cfg["instances"]]
    c.update_service(sid, {"status": "stopped"})
    svc = c.wait_service(sid, ("stopped",), 60)
    assert svc["status"] == "stopped"
    resp = httpx.post(
        f"{p.url}/v1/infers/{sid}",
        json={"images": [[0] * 64]},
        headers={"X-Auth-Token": c.token()},
        timeout=5,
    )
    assert resp.status_code == 503
    assert resp.json()["error_code"] == "ModelArts.4203"
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), 15, what="instances exit")
    c.update_service(sid, {"status": "running"})
    assert c.wait_service(sid, timeout=60)["status"] == "running"
    assert c.predict(sid, {"images": [[0] * 64]})["predicted_label"]


def test_weight_only_update_keeps_instances(digits) -> None:  # type: ignore[no-untyped-def]
    _p, c, sid = digits
    svc = c.get_service(sid)
    pids = sorted(i["pid"] for cfg in svc["config"] for i in cfg["instances"])
    config = [{k: cfg[k] for k in ("model_id", "specification", "instance_count")} for cfg in svc["config"]]
    config[0]["weight"], config[1]["weight"] = 0, 100
    c.update_service(sid, {"config": config})

    def all_v2() -> bool:
        resp = c.predict_raw(sid, json={"images": [[0] * 64]})
        return resp.headers.get("x-modelport-version") == "2.0.0"

    wait_until(all_v2, 10, what="route update")
    versions = {c.predict_raw(sid, json={"images": [[0] * 64]}).headers["x-modelport-version"] for _ in range(20)}
    assert versions == {"2.0.0"}
    after = sorted(i["pid"] for cfg in c.get_service(sid)["config"] for i in cfg["instances"])
    assert after == pids


def test_model_errors_pass_through_untouched(shared_platform: PlatformProc, tmp_path: Path) -> None:
    c = shared_platform.client()
    pkg = tmp_path / "picky"
    (pkg / "model").mkdir(parents=True)
    (pkg / "model" / "config.json").write_text(json.dumps({"model_type": "PyTorch", "model_algorithm": "x"}))
    (pkg / "model" / "customize_service.py").write_text(
        "from model_service.pytorch_model_service import PTServingBaseService\n"
        "class Picky(PTServingBaseService):\n"
        "    def _inference(self, data):\n"
        "        if data.get('fail'):\n"
        "            raise ValueError('model says no')\n"
        "        return {'ok': True}\n"
    )
    sid = _deploy(c, "picky", [(_import(c, "picky", "1.0.0", pkg, "PyTorch"), 100, 1)])
    assert c.wait_service(sid, timeout=60)["status"] == "running"
    resp = c.predict_raw(sid, json={"fail": True})
    assert resp.status_code == 500
    body = resp.json()
    assert "error_code" not in body and "model says no" in json.dumps(body)
    assert c.predict_raw(sid, json={}).json() == {"ok": True}
    wait_until(lambda: c.get_service(sid)["failed_times"] >= 1, 15, what="failed_times")
    # platform-made errors are always coded
    missing = c.predict_raw("not-a-service", json={})
    assert missing.status_code == 404 and missing.json()["error_code"] == "ModelArts.4201"


def test_import_error_ends_failed_with_the_error(shared_platform: PlatformProc, tmp_path: Path) -> None:
    c = shared_platform.client()
    pkg = tmp_path / "broken"
    (pkg / "model").mkdir(parents=True)
    (pkg / "model" / "config.json").write_text(json.dumps({"model_type": "PyTorch", "model_algorithm": "x"}))
    (pkg / "model" / "customize_service.py").write_text("import definitely_not_installed_pkg\n")
    sid = _deploy(c, "broken", [(_import(c, "broken", "1.0.0", pkg, "PyTorch"), 100, 1)])
    svc = c.wait_service(sid, ("failed", "running"), timeout=90)
    assert svc["status"] == "failed", svc
    assert "definitely_not_installed_pkg" in svc["error_msg"]
    events = c.events(sid, event_type="abnormal")["events"]
    assert any("definitely_not_installed_pkg" in e["event_info"] for e in events)
    # it stays failed: no endless restarts
    insts = c.get_service(sid)["config"][0]["instances"]
    assert [i["status"] for i in insts] == ["failed"]
    c.delete_service(sid)


def test_command_model(shared_platform: PlatformProc) -> None:
    c = shared_platform.client()
    mid = _import(c, "cmd-echo", "1.0.0", EXAMPLES / "command-echo", "Image")
    sid = _deploy(c, "cmd-echo", [(mid, 100, 2)])
    svc = c.wait_service(sid, timeout=90)
    assert svc["status"] == "running", svc
    assert len(svc["config"][0]["instances"]) == 2
    assert c.predict(sid, {"hello": "world"})["echo"] == {"hello": "world"}
    c.delete_service(sid)
    wait_until(lambda: all(s["service_id"] != sid for s in c.list_services()["services"]), 60, what="delete")


def test_cli_round_trip(shared_platform: PlatformProc) -> None:
    p = shared_platform
    out = p.cli(
        "model",
        "import",
        str(EXAMPLES / "echo"),
        "--name",
        "cli-echo",
        "--version",
        "1.0.0",
        "--json",
        check=True,
    )
    model = json.loads(out.stdout)
    assert model["model_status"] == "published"
    out = p.cli(
        "service",
        "deploy",
        "cli-echo",
        "-m",
        "cli-echo:1.0.0",
        "--spec",
        "modelarts.vm.cpu.1u",
        "--json",
        check=True,
    )
    svc = json.loads(out.stdout)
    assert svc["status"] == "running"
    out = p.cli("predict", "cli-echo", "--json", '{"a": 1}', "--raw", check=True)
    assert json.loads(out.stdout) == {"a": 1}
    listed = json.loads(p.cli("service", "list", "--json", check=True).stdout)
    assert "cli-echo" in [s["service_name"] for s in listed["services"]]
    human = p.cli("service", "show", "cli-echo", check=True).stdout
    assert "running" in human and "cli-echo" in human
    events = p.cli("service", "events", "cli-echo", check=True).stdout
    assert "ready" in events
    bad = p.cli("service", "show", "nope")
    assert bad.returncode == 1 and "ModelArts.3502" in bad.stderr
    bad = p.cli("model", "delete", model["model_id"])
    assert bad.returncode == 1 and "ModelArts.3009" in bad.stderr
    p.cli("service", "stop", "cli-echo", check=True)
    p.cli("service", "delete", "cli-echo", check=True)
