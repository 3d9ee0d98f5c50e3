"""BaseService: the ModelArts inference-code contract that every `customize_service.py` implements.

A model package's `model/customize_service.py` defines exactly one subclass of `BaseService`
(directly or through one of the engine aliases in `model_service.*`, so ModelArts code runs
unmodified). The python runtime constructs it once, then for every request calls
`inference(data)`, which runs `_preprocess -> _inference -> _postprocess`:

* `data` is the request, already parsed: a JSON body arrives decoded (usually a dict); a
  `multipart/form-data` body arrives as `{field: {file_name: file-like}}` with non-file
  fields as plain strings `{field: "value"}`; any other body arrives as `bytes`.
* `_postprocess` returns the response: anything JSON-serialisable (numpy values are turned
  into lists/numbers), or `str`/`bytes` to answer text/binary as is.
* An exception in these hooks is the model's error: the caller gets 500
  `{"erno": "MR.0105", "msg": "<type>: <message>"}` and the traceback goes to the log.
* Streaming: when `inference(data)` returns an iterator — typically `_inference` is a
  generator (`yield` per token) or an async generator (`async def` + `yield`) and the default
  `_postprocess` passes it through; a `_postprocess` that transforms items must itself return
  an iterator — the response is streamed item by item as Server-Sent Events, or as JSON lines
  when the client sends `Accept: application/x-ndjson` (`modelport.runtime.streaming`; config.json
  `stream` sets the `[DONE]` event and keep-alives). A client that disconnects closes the
  generator: `GeneratorExit` at its `yield`.

Optional hooks, found by name (the runtime never calls them unless the subclass defines them):

* `websocket(self, messages)` serves WebSocket sessions at the package's API urls: an async
  generator method (`async for message in messages: yield reply`) runs on the event loop, a
  plain generator method on a thread of its own. Messages are `str` (text frames) or `bytes`
  (binary); replies likewise (anything else is sent as JSON text). Without it, upgrades are
  refused with 403 MP.4405. See `modelport.runtime.websocket`.
* `infer_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]` answers Open
  Inference Protocol V2 calls (`POST /v2/models/{name}/infer`). Without it, V2 calls go through
  `inference()` with the decoded tensors as a dict of numpy arrays and a dict (or one array) as
  the result. See `modelport.runtime.v2`.

Construction: DL engines take `__init__(self, model_name, model_path)`, ML engines
`__init__(self, model_path)`; the runtime looks at the subclass's signature and calls the one
it defines. `model_path` is always the package's `model/` directory as a string (ModelArts
passes PyTorch/Scikit models the model *file*; here, open files as
`os.path.join(self.model_path, "model.pth")`). Heavy loading belongs in `__init__`: the
instance answers `GET /health` with 503 until it returns. Hooks may be called from several
threads at once (MODELPORT_HANDLER_THREADS, default 4); guard shared state that is not
thread-safe.
"""

from __future__ import annotations

import os
from typing import Any


class BaseService:
    """Override `__init__` to load the model and any of the three hooks; the defaults pass data through."""

    model_name: str
    model_path: str

    def __init__(self, model_name: str | None = None, model_path: str | None = None) -> None:
        # ML-engine subclasses call `super().__init__(model_path)` with one argument.
        if model_path is None and model_name is not None:
            model_name, model_path = None, model_name
        self.model_path = model_path or ""
        self.model_name = model_name or os.path.basename(os.path.dirname(os.path.abspath(self.model_path)))

    def _preprocess(self, data: Any) -> Any:
        """Raw API input -> model input."""
        return data

    def _inference(self, data: Any) -> Any:
        """Model input -> model output. ModelArts' engine images call the engine here; override it."""
        return data

    def _postprocess(self, data: Any) -> Any:
        """Model output -> API response (JSON-serialisable, or str/bytes)."""
        return data

    def inference(self, data: Any) -> Any:
        """One request: `_preprocess -> _inference -> _postprocess`."""
        return self._postprocess(self._inference(self._preprocess(data)))
