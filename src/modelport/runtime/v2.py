"""Open Inference Protocol V2 (KServe / Triton REST) for the python runtime: routes and the handler mapping.

Routes (all answers JSON; errors are `{"error": "<message>"}`):

* `GET /v2/health/live` 200 `{"live": true}`; `GET /v2/health/ready` 200 `{"ready": true}`, or
  503 `{"ready": false}` while the model loads;
* `GET /v2` server metadata `{"name": "modelport", "version", "extensions": ["binary_tensor_data"]}`;
* `GET /v2/models/{name}[/versions/{v}]` model metadata `{"name", "versions", "platform":
  "modelport-python", "inputs", "outputs"}`, tensors derived from config.json `apis[0]`'s
  `request.data` / `response.data` JSON schema where they can be (else `[]`);
* `GET /v2/models/{name}[/versions/{v}]/ready` 200 / 503;
* `POST /v2/models/{name}[/versions/{v}]/infer` typed tensors in, typed tensors out (the codec is
  `v2_tensors`: JSON or the binary tensor extension).

`{name}` must be the model's name (config.json `model_name`, else the package directory's name;
MODELPORT_MODEL_NAME overrides it), else 404. A version is checked only when the instance knows
its own (MODELPORT_MODEL_VERSION); otherwise any version is this model.

The adapter around the plain service class, KServe style: a service that defines
`infer_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]` gets the decoded
inputs there; any other service gets them as `inference(inputs)`, i.e. `_preprocess ->
_inference -> _postprocess` with a dict of numpy arrays, and its result (a dict of array-likes,
or one array-like, named after the single requested output or `output0`) is converted back
(datatype from the numpy dtype; str/bytes -> BYTES). Both run on the handler thread pool.

Status codes: 400 for a bad request (malformed JSON or tensors, shape/data size mismatch, unknown
datatype or output; a handler may raise `v2_tensors.InvalidInput` for the same), 500 for an
exception in the model or an output that is not a tensor, 404 unknown model or path, 405 wrong
method, 503 not loaded yet. These V2 error bodies are the *instance's* answer: to the gateway
they are the model's response, relayed untouched like any other model response, never a
platform `{"error_code", "error_msg"}` error.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

import modelport
from modelport.runtime.asgi import Receive, Scope, Send
from modelport.runtime.results import JSON, OCTETS, describe, is_stream
from modelport.runtime.server import HandlerApp, read_body
from modelport.runtime.v2_tensors import (
    InvalidInput,
    OutputError,
    as_output_tensors,
    decode_request,
    encode_response,
    tensor_metadata,
)

PLATFORM = "modelport-python"
HEADER_LENGTH = b"inference-header-content-length"

Answer = tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]  # status, content type, body, headers


def _answer(status: int, value: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
    return status, JSON, json.dumps(value, ensure_ascii=False).encode(), headers or []


def _error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
    return _answer(status, {"error": message}, headers)


class V2Protocol:
    """The V2 routes of one instance; holds only plain data about the model."""

    def __init__(self, model_name: str, model_version: str | None, apis: list[dict[str, Any]]) -> None:
        self.model_name = model_name
        self.model_version = model_version
        api = apis[0] if apis else {}
        self.metadata = {
            "name": model_name,
            "versions": [model_version] if model_version else [],
            "platform": PLATFORM,
            "inputs": tensor_metadata((api.get("request") or {}).get("data")),
            "outputs": tensor_metadata((api.get("response") or {}).get("data")),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: HandlerApp) -> None:
        answer = await self._route(scope, receive, app)
        status, content_type, body, headers = answer
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive, app: HandlerApp) -> Answer:
        parts = [p for p in scope["path"].split("/") if p][1:]  # drop "v2"
        method = scope["method"]
        if not parts:
            return _get_only(method) or _answer(200, self._server_metadata())
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            if refused := _get_only(method):
                return refused
            if parts[1] == "live":
                return _answer(200, {"live": True})
            return _answer(200 if app.state == "ready" else 503, {"ready": app.state == "ready"})
        if parts[0] != "models" or len(parts) < 2:
            return _error(404, f"no V2 endpoint at {scope['path']}")
        name, rest = parts[1], parts[2:]
        version = None
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        if missing := self._missing(name, version):
            return missing
        if not rest:
            return _get_only(method) or _answer(200, self.metadata)
        if rest == ["ready"]:
            ready = app.state == "ready"
            return _get_only(method) or _answer(200 if ready else 503, {"name": name, "ready": ready})
        if rest == ["infer"]:
            if method != "POST":
                return _error(405, f"use POST for {scope['path']}", [(b"allow", b"POST")])
            return await self._infer(scope, receive, app)
        return _error(404, f"no V2 endpoint at {scope['path']}")

    def _server_metadata(self) -> dict[str, Any]:
        return {"name": "modelport", "version": modelport.__version__, "extensions": ["binary_tensor_data"]}

    def _missing(self, name: str, version: str | None) -> Answer | None:
        if name != self.model_name:
            return _error(404, f"model '{name}' is not served here; this instance serves '{self.model_name}'")
        if version is not None and self.model_version and version != self.model_version:
            return _error(
                404, f"model '{name}' has no version '{version}'; this instance serves '{self.model_version}'"
            )
        return None

    async def _infer(self, scope: Scope, receive: Receive, app: HandlerApp) -> Answer:
        body = await read_body(receive)
        service = app.service
        if service is None:
            return _error(503, f"model '{self.model_name}' is {app.state}; retry once it is ready")
        header_length = None
        for key, value in scope["headers"]:
            if key == HEADER_LENGTH:
                try:
                    header_length = int(value)
                except ValueError:
                    return _error(400, f"Inference-Header-Content-Length {value!r} is not a number")
                break
        answer: Answer = await app.pool.run(self._infer_blocking, service, (body, header_length))
        return answer

    def _infer_blocking(self, service: Any, request_body: tuple[bytes, int | None]) -> Answer:
        """On a handler thread: decode, call the model, encode; every failure becomes a V2 error."""
        try:
            request = decode_request(*request_body)
        except InvalidInput as exc:
            return _error(400, str(exc))
        try:
            result = _call_model(service, request.inputs)
            tensors = as_output_tensors(result, request.outputs)
            body, header_length = encode_response(self.model_name, self.model_version, request, tensors)
        except InvalidInput as exc:
            return _error(400, str(exc))
        except OutputError as exc:
            return _error(500, f"the model's result is not a V2 tensor set: {exc}")
        except BaseException as exc:  # even SystemExit: a handler must not take the server down
            traceback.print_exc()
            return _error(500, describe(exc))
        if header_length is None:
            return 200, JSON, body, []
        return 200, OCTETS, body, [(HEADER_LENGTH, str(header_length).encode())]


def _call_model(service: Any, inputs: dict[str, Any]) -> Any:
    infer_tensors = getattr(service, "infer_tensors", None)
    result = infer_tensors(inputs) if callable(infer_tensors) else service.inference(inputs)
    if is_stream(result):
        raise OutputError("the handler streams (returned an iterator); V2 infer needs one answer")
    return result


def _get_only(method: str) -> Answer | None:
    return None if method in ("GET", "HEAD") else _error(405, "use GET", [(b"allow", b"GET")])
