"""Open Inference Protocol V2 in the python runtime: health, metadata, typed-tensor infer (JSON and binary), errors."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from runtime_support import EXAMPLES, Instance, Launcher, write_package

from modelport.runtime import v2_tensors

TENSORS = """
import numpy as np

from modelport import BaseService
from modelport.runtime.v2_tensors import InvalidInput


class TensorService(BaseService):
    def infer_tensors(self, inputs):
        if "fail" in inputs:
            raise ValueError("model broke")
        x = inputs["x"]
        if x.ndim != 2:
            raise InvalidInput("x must be 2-D, got shape %s" % (list(x.shape),))
        x *= 1  # inputs are writable arrays
        out = {"doubled": x * 2, "row_sum": x.sum(axis=1), "x_dtype": np.array([str(x.dtype)])}
        if "ids" in inputs:
            out["ids_plus_one"] = inputs["ids"] + 1
        if "text" in inputs:
            text = inputs["text"]
            out["upper"] = np.array([t.upper() for t in text.ravel()], dtype=object).reshape(text.shape)
        if "flags" in inputs:
            out["not_flags"] = ~inputs["flags"]
        if "bad_output" in inputs:
            out["weird"] = {"not": "a tensor"}
        return out
"""
PLAIN = """
from modelport import BaseService


class PlainService(BaseService):
    def _preprocess(self, data):
        return data

    def _inference(self, data):
        x = data["x"]
        if "single" in data:
            return x + 1
        return {"mean": x.mean(), "label": "big" if x.mean() > 1 else "small", "dims": list(x.shape)}

    def _postprocess(self, data):
        return data
"""
SCHEMA_API = {
    "url": "/",
    "request": {
        "data": {
            "type": "object",
            "properties": {
                "x": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "ids": {"type": "array", "items": {"type": "integer"}},
                "meta": {"type": "object"},
            },
        }
    },
    "response": {"data": {"type": "object", "properties": {"label": {"type": "string"}}}},
}


@pytest.fixture(scope="module")
def tensors(launch_shared: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Instance:
    root = tmp_path_factory.mktemp("pkg")
    config = {"model_type": "Custom", "model_name": "tensors", "apis": [SCHEMA_API]}
    package = write_package(root / "t", config, {"customize_service.py": TENSORS})
    instance = launch_shared(package, env={"MODELPORT_MODEL_VERSION": "3"})
    instance.wait_healthy()
    return instance


@pytest.fixture(scope="module")
def plain(launch_shared: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Instance:
    root = tmp_path_factory.mktemp("pkg")
    instance = launch_shared(write_package(root / "plain", {"model_type": "Custom"}, {"customize_service.py": PLAIN}))
    instance.wait_healthy()
    return instance


def _infer(instance: Instance, body: dict[str, object], model: str = "tensors") -> httpx.Response:
    return httpx.post(f"{instance.url}/v2/models/{model}/infer", json=body, timeout=10)


X = {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6.5]]}


def test_health_and_metadata(tensors: Instance) -> None:
    get = lambda path: httpx.get(tensors.url + path)  # noqa: E731
    assert (get("/v2/health/live").status_code, get("/v2/health/live").json()) == (200, {"live": True})
    assert get("/v2/health/ready").json() == {"ready": True}
    server = get("/v2").json()
    assert server["name"] == "modelport"
    assert "binary_tensor_data" in server["extensions"]
    assert get("/v2/").json() == server
    meta = get("/v2/models/tensors").json()
    assert meta == {
        "name": "tensors",
        "versions": ["3"],
        "platform": "modelport-python",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "ids", "datatype": "INT64", "shape": [-1]},
        ],
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [1]}],
    }
    assert get("/v2/models/tensors/versions/3").json() == meta
    assert get("/v2/models/tensors/ready").json() == {"name": "tensors", "ready": True}
    assert get("/v2/models/tensors/versions/3/ready").status_code == 200
    missing = get("/v2/models/tensors/versions/4/ready")
    assert missing.status_code == 404 and "no version '4'" in missing.json()["error"]
    other = get("/v2/models/resnet/ready")
    assert other.status_code == 404
    assert other.json() == {"error": "model 'resnet' is not served here; this instance serves 'tensors'"}


def test_routing_errors(tensors: Instance) -> None:
    assert httpx.get(tensors.url + "/v2/nope").status_code == 404
    assert httpx.get(tensors.url + "/v2/models/tensors/stats").json()["error"].startswith("no V2 endpoint")
    wrong_method = httpx.get(tensors.url + "/v2/models/tensors/infer")
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
    assert httpx.post(tensors.url + "/v2/models/tensors", json={}).status_code == 405
    # The package's own API still answers beside V2.
    assert httpx.post(tensors.url + "/", json={"a": 1}).json() == {"a": 1}


def test_tritonclient_binary_and_json(tensors: Instance) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{tensors.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tensors") and client.is_model_ready("tensors", "3")
        assert client.get_model_metadata("tensors")["platform"] == "modelport-python"
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        ids = np.array([1, 2**40], dtype=np.int64)
        text = np.array([[b"ab"], ["é-x".encode()]], dtype=object)
        for binary in (True, False):  # binary tensor extension (tritonclient's default), then plain JSON
            inputs = [
                httpclient.InferInput("x", list(x.shape), "FP32"),
                httpclient.InferInput("ids", list(ids.shape), "INT64"),
                httpclient.InferInput("text", list(text.shape), "BYTES"),
            ]
            for tensor, value in zip(inputs, (x, ids, text), strict=True):
                tensor.set_data_from_numpy(value, binary_data=binary)
            names = ("doubled", "row_sum", "ids_plus_one", "upper")
            outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
            result = client.infer("tensors", inputs, model_version="3", outputs=outputs, request_id="r1")
            np.testing.assert_array_equal(result.as_numpy("doubled"), x * 2)
            assert result.as_numpy("doubled").dtype == np.float32
            np.testing.assert_array_equal(result.as_numpy("row_sum"), x.sum(axis=1))
            np.testing.assert_array_equal(result.as_numpy("ids_plus_one"), ids + 1)
            assert result.as_numpy("ids_plus_one").dtype == np.int64
            upper = result.as_numpy("upper")
            assert upper.shape == (2, 1)
            # BYTES reach the handler as bytes (bytes.upper() leaves non-ASCII alone).
            assert [v if isinstance(v, bytes) else v.encode() for v in upper.ravel()] == [b"AB", "é-X".encode()]
            response = result.get_response()
            assert response["id"] == "r1" and response["model_version"] == "3"
            assert ("data" not in response["outputs"][0]) is binary
        # No outputs named: every output comes back, in binary (tritonclient's binary_data_output).
        only_x = httpclient.InferInput("x", [1, 2], "FP32")
        only_x.set_data_from_numpy(np.array([[1.5, 2]], dtype=np.float32))
        everything = client.infer("tensors", [only_x])
        assert {o["name"] for o in everything.get_response()["outputs"]} == {"doubled", "row_sum", "x_dtype"}
        assert everything.as_numpy("x_dtype")[0] in (b"float32", "float32")
        with pytest.raises(Exception, match="not served here"):
            client.infer("nope", [only_x])
    finally:
        client.close()


def test_json_infer_with_nested_data(tensors: Instance) -> None:
    ids = {"name": "ids", "shape": [3], "datatype": "INT64", "data": [1, -2, 9007199254740993]}
    flags = {"name": "flags", "shape": [2], "datatype": "BOOL", "data": [True, False]}
    response = _infer(tensors, {"id": "42", "inputs": [X, ids, flags]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("tensors", "3", "42")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["doubled"] == {"name": "doubled", "datatype": "FP32", "shape": [2, 3], "data": [2, 4, 6, 8, 10, 13]}
    assert outputs["row_sum"]["data"] == [6, 15.5]
    assert outputs["ids_plus_one"]["data"] == [2, -1, 9007199254740994]  # int64 exact, no float rounding
    assert outputs["not_flags"] == {"name": "not_flags", "datatype": "BOOL", "shape": [2], "data": [False, True]}
    assert outputs["x_dtype"] == {"name": "x_dtype", "datatype": "BYTES", "shape": [1], "data": ["float32"]}
    only = _infer(tensors, {"inputs": [X], "outputs": [{"name": "row_sum"}]}).json()["outputs"]
    assert [o["name"] for o in only] == ["row_sum"]


def test_binary_request_by_hand(tensors: Instance) -> None:
    x = np.array([[1, 2], [3, 4]], dtype=np.float32)
    text = [b"hi", b"\xc3\xa9t\xc3\xa9"]
    text_raw = b"".join(struct.pack("<I", len(t)) + t for t in text)
    header = {
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
            {"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(text_raw)}},
        ],
        "outputs": [{"name": "doubled", "parameters": {"binary_data": True}}, {"name": "upper"}],
    }
    head = json.dumps(header).encode()
    response = httpx.post(
        tensors.url + "/v2/models/tensors/versions/3/infer",
        content=head + x.tobytes() + text_raw,
        headers={"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    answer = json.loads(response.content[:length])
    doubled, upper = answer["outputs"]
    assert doubled["parameters"] == {"binary_data_size": 16} and "data" not in doubled
    values = np.frombuffer(response.content[length:], dtype="<f4").reshape(doubled["shape"])
    np.testing.assert_array_equal(values, x * 2)
    assert upper["data"] == ["HI", "éTé"]  # JSON output, as asked; UTF-8 decoded


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [{**X, "shape": [4, 2]}]}, "shape [4, 2] needs 8 elements, got 6"),
        ({"inputs": [{**X, "datatype": "FP128"}]}, "unknown datatype 'FP128'"),
        ({"inputs": [{**X, "data": [["a", "b", "c"], ["d", "e", "f"]]}]}, "FP32 needs numbers"),
        ({"inputs": [{**X, "data": [[1, 2, 3], [4, 5]]}]}, "not a regular nested list"),
        ({"inputs": [{"name": "i", "shape": [1], "datatype": "INT8", "data": [300]}]}, "out of range for INT8"),
        ({"inputs": [{"name": "i", "shape": [1], "datatype": "INT64", "data": [1.5]}]}, "INT64 needs integers"),
        ({"inputs": [{"name": "b", "shape": [1], "datatype": "BYTES", "data": [1]}]}, "BYTES data must be strings"),
        ({"inputs": [{**X, "shape": [2, -3]}]}, "'shape' must be a list of non-negative integers"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "neither 'data' nor"),
        ({"inputs": [X, X]}, "input 'x' appears twice"),
        ({"inputs": []}, "'inputs' must be a non-empty list"),
        ({"inputs": [X], "outputs": [{"name": "nope"}]}, "unknown output 'nope'"),
        ({"inputs": [{**X, "shape": [6], "data": [1, 2, 3, 4, 5, 6]}]}, "x must be 2-D"),  # the handler's own
    ],
)
def test_bad_tensors_are_400(tensors: Instance, body: dict[str, object], message: str) -> None:
    response = _infer(tensors, body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_malformed_bodies_are_400(tensors: Instance) -> None:
    url = tensors.url + "/v2/models/tensors/infer"
    assert "not valid JSON" in httpx.post(url, content=b"{").json()["error"]
    short = httpx.post(url, content=b"{}", headers={"Inference-Header-Content-Length": "10"})
    assert short.status_code == 400 and "body has 2 bytes" in short.json()["error"]
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    ).encode()
    extra = httpx.post(url, content=header + bytes(12), headers={"Inference-Header-Content-Length": str(len(header))})
    assert extra.status_code == 400 and "4 bytes that no input" in extra.json()["error"]


def test_model_errors_are_500(tensors: Instance) -> None:
    fail = {"name": "fail", "shape": [1], "datatype": "BOOL", "data": [True]}
    response = _infer(tensors, {"inputs": [X, fail]})
    assert (response.status_code, response.json()) == (500, {"error": "ValueError: model broke"})
    assert "ValueError: model broke" in tensors.log()
    bad = {"name": "bad_output", "shape": [1], "datatype": "BOOL", "data": [True]}
    response = _infer(tensors, {"inputs": [X, bad]})
    assert response.status_code == 500
    assert "output 'weird' holds dict values" in response.json()["error"]


def test_handler_without_infer_tensors(plain: Instance) -> None:
    name = "plain"  # the package directory's name: its config.json has no model_name
    response = _infer(plain, {"inputs": [X]}, model=name)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["mean"] == {"name": "mean", "datatype": "FP32", "shape": [], "data": [pytest.approx(3.5833333)]}
    assert outputs["label"] == {"name": "label", "datatype": "BYTES", "shape": [], "data": ["big"]}
    assert outputs["dims"] == {"name": "dims", "datatype": "INT64", "shape": [2], "data": [2, 3]}
    single = {"name": "single", "shape": [1], "datatype": "BOOL", "data": [True]}
    unnamed = _infer(plain, {"inputs": [X, single]}, model=name).json()["outputs"]
    assert [(o["name"], o["shape"], o["data"]) for o in unnamed] == [("output0", [2, 3], [2, 3, 4, 5, 6, 7.5])]
    named = _infer(plain, {"inputs": [X, single], "outputs": [{"name": "y"}]}, model=name).json()["outputs"]
    assert [o["name"] for o in named] == ["y"]
    assert httpx.get(plain.url + "/v2/models/plain").json()["inputs"] == []  # nothing derivable


def test_v2_url_declared_by_the_package_wins(launch: Launcher, tmp_path: Path) -> None:
    config = {"model_type": "Custom", "apis": [{"url": "/v2/models/own/infer"}]}
    handler = (
        "from modelport import BaseService\n\n\n"
        "class S(BaseService):\n    def _inference(self, data):\n        return {'own': data}\n"
    )
    instance = launch(write_package(tmp_path / "own", config, {"customize_service.py": handler}))
    instance.wait_healthy()
    assert httpx.post(instance.url + "/v2/models/own/infer", json={"a": 1}).json() == {"own": {"a": 1}}
    assert httpx.get(instance.url + "/v2/health/live").json() == {"live": True}


def test_echo_example_answers_v2_with_its_inputs(launch: Launcher) -> None:
    instance = launch(EXAMPLES / "echo")
    instance.wait_healthy()
    text = {"name": "t", "shape": [1, 1], "datatype": "BYTES", "data": [["hi"]]}
    outputs = _infer(instance, {"inputs": [X, text]}, model="echo").json()["outputs"]
    assert outputs == [{**X, "data": [1, 2, 3, 4, 5, 6.5]}, {**text, "data": ["hi"]}]  # data comes back flat


NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


@settings(max_examples=150, deadline=None)
@given(datatype=st.sampled_from([*NUMERIC, "BYTES"]), binary=st.booleans(), data=st.data())
def test_tensor_codec_round_trips(datatype: str, binary: bool, data: st.DataObject) -> None:
    """Any tensor the model answers, fed back as a request input, decodes to the same array."""
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if datatype == "BYTES":
        element = st.binary(max_size=8) if binary else st.text(max_size=8).map(str.encode)
        array = np.array(
            data.draw(st.lists(element, min_size=math.prod(shape), max_size=math.prod(shape))), dtype=object
        )
        array = array.reshape(shape) if array.size else np.empty(shape, dtype=object)
    else:
        array = data.draw(hnp.arrays(v2_tensors.DATATYPES[datatype], shape))
    request = v2_tensors.InferRequest(id=None, inputs={}, outputs=None, binary_output=binary)
    body, header_length = v2_tensors.encode_response("m", None, request, {"t": array})
    header = json.loads(body[:header_length] if header_length else body)
    (entry,) = header["outputs"]
    assert (entry["datatype"], entry["shape"]) == (datatype, list(shape))
    back = json.dumps({"inputs": [{**entry, "name": "t"}]}).encode()
    raw = body[header_length:] if header_length else b""
    decoded = v2_tensors.decode_request(back + raw, len(back)).inputs["t"]
    assert decoded.shape == array.shape
    if datatype == "BYTES":
        assert decoded.ravel().tolist() == array.ravel().tolist()
    else:
        assert decoded.dtype == array.dtype
        np.testing.assert_array_equal(decoded, array)
