"""Every bad input to the management API gets a 4xx with its error code, and changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from tests.conftest import EXAMPLES, PlatformProc, wait_until


@pytest.fixture(scope="module")
def api(shared_platform: PlatformProc, digits_packages: dict[str, Path]):  # type: ignore[no-untyped-def]
    c = shared_platform.client()
    ok = c.import_model("val-echo", "1.0.0", "Custom", EXAMPLES / "echo")
    assert c.wait_model(ok)["model_status"] == "published"
    yield shared_platform, c, ok
    c.close()


def _call(p: PlatformProc, c, method: str, path: str, **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"X-Auth-Token": c.token(), **kw.pop("headers", {})}
    return httpx.request(method, f"{p.url}/v1/{c.project_id}{path}", headers=headers, timeout=30, **kw)


def _counts(c) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return c.list_models()["total_count"], c.list_services()["total_count"]


def _assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error_code"] == code, body
    assert body["error_msg"]


def _svc(model_id: str, **cfg) -> dict:  # type: ignore[no-untyped-def]
    entry = {
        "model_id": model_id,
        "weight": 100,
        "specification": "modelarts.vm.cpu.1u",
        "instance_count": 1,
        **cfg,
    }
    return {"service_name": "val-svc", "infer_type": "real-time", "config": [entry]}


MODEL_CASES = [
    ("bad version", {"model_version": "01.0.0"}, 400, "ModelArts.0101"),
    ("bad name", {"model_name": "no spaces!"}, 400, "ModelArts.0101"),
    ("unknown field", {"colour": "red"}, 400, "ModelArts.0101"),
    ("unknown type", {"model_type": "Keras"}, 400, "ModelArts.0101"),
    ("missing source", {"source_location": None}, 400, "ModelArts.3037"),
    ("source not a dir", {"source_location": "/nonexistent/x"}, 400, "ModelArts.3017"),
    ("remote source", {"source_location": "obs://bucket/x"}, 400, "ModelArts.3017"),
    ("template", {"model_type": "Template"}, 400, "ModelArts.3016"),
    ("duplicate", {"model_name": "val-echo"}, 409, "ModelArts.3002"),
]


@pytest.mark.parametrize(("name", "change", "status", "code"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_import(api, name, change, status, code) -> None:  # type: ignore[no-untyped-def]
    p, c, _ok = api
    body = {
        "model_name": "val-new",
        "model_version": "1.0.0",
        "model_type": "Custom",
        "source_location": str(EXAMPLES / "echo"),
    }
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    before = _counts(c)
    _assert_error(_call(p, c, "POST", "/models", json=body), status, code)
    assert _counts(c) == before


def test_source_without_model_dir(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p, c, _ok = api
    before = _counts(c)
    body = {
        "model_name": "val-x",
        "model_version": "1.0.0",
        "model_type": "Custom",
        "source_location": f"file://{tmp_path}",
    }
    _assert_error(_call(p, c, "POST", "/models", json=body), 400, "ModelArts.3017")
    assert _counts(c) == before


def test_invalid_config_json_ends_failed_with_reason(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p, c, _ok = api
    pkg = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "echo", pkg)
    (pkg / "model" / "config.json").write_text("{not json")
    model_id = c.import_model("val-broken", "1.0.0", "Custom", pkg)
    model = c.wait_model(model_id)
    assert model["model_status"] == "failed"
    assert "config.json" in model["failed_reason"]
    # and a failed model cannot be deployed
    before = _counts(c)
    _assert_error(_call(p, c, "POST", "/services", json=_svc(model_id)), 400, "ModelArts.3515")
    assert _counts(c) == before


def _two(ok: str, other: str) -> dict:
    body = _svc(ok)
    body["config"].append({**body["config"][0], "model_id": other})
    return body


SERVICE_CASES = [
    ("weights not 100", lambda ok: _svc(ok, weight=90), 400, "MP.3001"),
    ("weight over 100", lambda ok: _svc(ok, weight=101), 400, "MP.3001"),
    (
        "weight missing",
        lambda ok: {
            **_svc(ok),
            "config": [{k: v for k, v in _svc(ok)["config"][0].items() if k != "weight"}],
        },
        400,
        "MP.3001",
    ),
    (
        "same version twice",
        lambda ok: {**_two(ok, ok), "config": [dict(_two(ok, ok)["config"][0], weight=50)] * 2},
        400,
        "ModelArts.3516",
    ),
    ("instance_count 0", lambda ok: _svc(ok, instance_count=0), 400, "ModelArts.0101"),
    ("instance_count 129", lambda ok: _svc(ok, instance_count=129), 400, "ModelArts.0101"),
    (
        "over capacity",
        lambda ok: _svc(ok, instance_count=128, specification="modelarts.vm.cpu.4u"),
        400,
        "ModelArts.3522",
    ),
    ("unknown flavor", lambda ok: _svc(ok, specification="modelarts.vm.gpu.huge"), 400, "ModelArts.3976"),
    ("unknown model", lambda ok: _svc("00000000-0000-0000-0000-000000000000"), 400, "ModelArts.3506"),
    ("unknown field", lambda ok: {**_svc(ok), "colour": "red"}, 400, "ModelArts.0101"),
    ("unknown config field", lambda ok: _svc(ok, colour="red"), 400, "ModelArts.0101"),
    ("bad description", lambda ok: {**_svc(ok), "description": "a<b"}, 400, "ModelArts.0101"),
    ("long name", lambda ok: {**_svc(ok), "service_name": "x" * 65}, 400, "ModelArts.0101"),
    ("edge", lambda ok: {**_svc(ok), "infer_type": "edge"}, 400, "ModelArts.3518"),
    ("batch without src_path", lambda ok: {**_svc(ok), "infer_type": "batch"}, 400, "ModelArts.3610"),
    ("bad env name", lambda ok: _svc(ok, envs={"1BAD": "x"}), 400, "ModelArts.0101"),
    ("no config", lambda ok: {**_svc(ok), "config": []}, 400, "ModelArts.0101"),
    (
        "bad stream idle timeout",
        lambda ok: {**_svc(ok), "additional_properties": {"stream_idle_timeout_s": 0}},
        400,
        "ModelArts.0101",
    ),
]


@pytest.mark.parametrize(("name", "make", "status", "code"), SERVICE_CASES, ids=[c[0] for c in SERVICE_CASES])
def test_bad_service_create(api, name, make, status, code) -> None:  # type: ignore[no-untyped-def]
    p, c, ok = api
    before = _counts(c)
    _assert_error(_call(p, c, "POST", "/services", json=make(ok)), status, code)
    assert _counts(c) == before


def test_malformed_json_body(api) -> None:  # type: ignore[no-untyped-def]
    p, c, _ok = api
    before = _counts(c)
    resp = _call(p, c, "POST", "/services", content=b"{oops", headers={"Content-Type": "application/json"})
    _assert_error(resp, 400, "ModelArts.4105")
    assert _counts(c) == before


def test_unknown_ids_and_paths(api) -> None:  # type: ignore[no-untyped-def]
    p, c, _ok = api
    _assert_error(_call(p, c, "GET", "/services/nope"), 404, "ModelArts.3502")
    _assert_error(_call(p, c, "GET", "/models/nope"), 404, "ModelArts.3001")
    _assert_error(_call(p, c, "PUT", "/services/nope", json={"status": "stopped"}), 404, "ModelArts.3502")
    _assert_error(_call(p, c, "DELETE", "/services/nope"), 404, "ModelArts.3502")
    _assert_error(_call(p, c, "GET", "/no/such/path"), 404, "MP.0404")


def test_duplicate_service_name_and_bad_update(api) -> None:  # type: ignore[no-untyped-def]
    p, c, ok = api
    body = _svc(ok)
    body["service_name"] = "val-dup"
    sid = c.create_service(body)
    try:
        _assert_error(_call(p, c, "POST", "/services", json=body), 409, "ModelArts.3503")
        _assert_error(
            _call(p, c, "PUT", f"/services/{sid}", json={"config": [dict(body["config"][0], weight=50)]}),
            400,
            "MP.3001",
        )
        _assert_error(_call(p, c, "PUT", f"/services/{sid}", json={"status": "paused"}), 400, "ModelArts.0101")
        # model in use cannot be deleted
        _assert_error(_call(p, c, "DELETE", f"/models/{ok}"), 400, "ModelArts.3009")
        svc = c.get_service(sid)
        assert svc["config"][0]["weight"] == 100
    finally:
        c.delete_service(sid)
        wait_until(lambda: all(s["service_id"] != sid for s in c.list_services()["services"]), 60, what="delete")


def test_list_filters_pages_and_sorts(api) -> None:  # type: ignore[no-untyped-def]
    p, c, _ok = api
    data = c.list_models(limit=1, offset=0)
    assert data["count"] == 1 and data["total_count"] >= 2
    names = [m["model_name"] for m in c.list_models(sort_by="create_at", order="asc")["models"]]
    assert names[0] == "val-echo"
    assert [m["model_name"] for m in c.list_models(model_name="val-echo", exact_match=True)["models"]] == ["val-echo"]
    _assert_error(_call(p, c, "GET", "/models", params={"sort_by": "colour"}), 400, "ModelArts.0101")
    _assert_error(_call(p, c, "GET", "/services", params={"limit": 0}), 400, "ModelArts.0101")


def test_specifications(api) -> None:  # type: ignore[no-untyped-def]
    _p, c, _ok = api
    specs = c.specifications()
    names = {s["specification"] for s in specs["specifications"]}
    assert "modelarts.vm.cpu.2u" in names
    assert specs["count"] == len(names)


def test_openapi_served(api) -> None:  # type: ignore[no-untyped-def]
    p, _c, _ok = api
    doc = httpx.get(f"{p.url}/openapi.json").json()
    assert "/v1/{project_id}/services" in doc["paths"]
    assert json.dumps(doc)
