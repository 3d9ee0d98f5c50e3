"""Open Inference Protocol V2 through the gateway: tritonclient's HTTP client against a python-runtime
instance at `/v1/infers/{service_id}/v2/...`, binary tensors and JSON, with the gateway's auth."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from gwtools import Env, service, table
from tests.runtime.runtime_support import Instance, launch_instance, write_package

from modelport.gateway.routes import Endpoint

TENSORS = """
from modelport import BaseService


class TensorService(BaseService):
    def infer_tensors(self, inputs):
        x = inputs["x"]
        return {"doubled": x * 2, "ids_plus_one": inputs["ids"] + 1}
"""


@pytest.fixture(scope="module")
def tensors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    root = tmp_path_factory.mktemp("v2")
    package = write_package(
        root / "pkg", {"model_type": "Custom", "model_name": "tensors"}, {"customize_service.py": TENSORS}
    )
    inst = launch_instance(package, root, {"MODELPORT_MODEL_VERSION": "3"})
    try:
        inst.wait_healthy()
        yield inst
    finally:
        inst.stop()


async def test_tritonclient_through_the_gateway(env: Env, tensors: Instance) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    endpoint = Endpoint("i1", "127.0.0.1", tensors.port)
    await env.serve(table(service("s1", [("v1", 100, [endpoint])])))
    base = f"127.0.0.1:{env.server.port}/v1/infers/s1"  # type: ignore[union-attr]
    auth = {"X-Auth-Token": env.token}

    def call() -> None:
        client = httpclient.InferenceServerClient(url=base)
        try:
            assert client.is_server_live(headers=auth) and client.is_model_ready("tensors", "3", headers=auth)
            assert client.get_model_metadata("tensors", headers=auth)["name"] == "tensors"
            x = np.arange(6, dtype=np.float32).reshape(2, 3)
            ids = np.array([1, 2**40], dtype=np.int64)
            for binary in (True, False):  # the binary tensor extension (tritonclient's default), then JSON
                inputs = [httpclient.InferInput("x", [2, 3], "FP32"), httpclient.InferInput("ids", [2], "INT64")]
                inputs[0].set_data_from_numpy(x, binary_data=binary)
                inputs[1].set_data_from_numpy(ids, binary_data=binary)
                outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("doubled", "ids_plus_one")]
                # A fresh dict each call: tritonclient adds Inference-Header-Content-Length to the one given.
                result = client.infer("tensors", inputs, outputs=outputs, headers=dict(auth))
                np.testing.assert_array_equal(result.as_numpy("doubled"), x * 2)
                assert result.as_numpy("doubled").dtype == np.float32
                np.testing.assert_array_equal(result.as_numpy("ids_plus_one"), ids + 1)
            # Without a credential the gateway refuses before the model sees anything.
            with pytest.raises(Exception, match=r"ModelArts\.0201"):
                client.infer("tensors", inputs)
        finally:
            client.close()

    await asyncio.to_thread(call)
