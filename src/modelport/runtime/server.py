"""The python handler server: one instance serving a package's `customize_service.py` over HTTP.

It obeys the instance contract (design.md): listens on `$HOST:$PORT`; `GET /health` answers
503 `{"health": "false", "status": "loading"}` while the service class is being constructed
(in a background thread, so probes get an answer during a long load), 200
`{"health": "true"}` once it is ready, and 500 with the error if loading failed — in that
case the traceback goes to stderr and the process exits 1 shortly after, so the orchestrator
sees the real error in the instance's log. SIGTERM stops accepting connections, lets the
requests in flight finish (up to `MODELPORT_GRACE_S`, default 60, at most 90) and exits 0.

Every other request to one of the package's API urls (`/` by default) is a prediction, of any
method. The body is parsed (JSON -> decoded value; `multipart/form-data` ->
`{field: {file_name: file-like}}` and `{field: "value"}`; anything else -> bytes; an empty
body -> `{}`; no content-type -> JSON if it parses, else bytes) and handed to
`service.inference` on a bounded thread pool (`MODELPORT_HANDLER_THREADS`, default 4), so
the event loop — and `/health` — stay responsive while user code runs. Answers:

* the handler's result as JSON (`str` as text, `bytes` as octet-stream);
* an exception in user code: 500 `{"erno": "MR.0105", "msg": "<type>: <message>"}`, the
  model's error in the spec's built-in-image form, never a platform error body;
* platform errors (`{"error_code", "error_msg"}`, catalog codes): malformed JSON 400
  ModelArts.4105, malformed multipart 400 ModelArts.4200, unknown path 404 MP.4404, model not
  ready 503 MP.4503, request cut by a shutdown past its grace period 503 MP.4504.

A handler that returns an iterator (a generator, an async generator...) is streamed as
Server-Sent Events or JSON lines (`streaming`). A WebSocket upgrade at an API url runs the
service's `websocket` hook (`websocket`). `/v2/...` speaks the Open Inference Protocol V2
(`v2`; needs numpy). An API url declared in config.json wins over a `/v2` path of the same name.

Knobs (environment): MODELPORT_HANDLER_THREADS (4), MODELPORT_GRACE_S (60, at most 90),
MODELPORT_WS_MAX_BYTES (16 MiB, largest WebSocket message), MODELPORT_MODEL_NAME /
MODELPORT_MODEL_VERSION (the name and version V2 clients use; default config.json
`model_name`, else the package directory's name, and no version). Streams: config.json `stream`.

The request path is a raw ASGI app (no framework) because per-request overhead is what
bounds the throughput of small models; everything but plain predictions branches off it
after the checks a prediction needs anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from modelport.errors import E, ErrorSpec, PlatformError
from modelport.packages import ModelPackage
from modelport.runtime import streaming, websocket
from modelport.runtime.asgi import Receive, Scope, Send
from modelport.runtime.pool import HandlerPool
from modelport.runtime.results import JSON, PLAIN_TYPES, encode_result, is_stream, model_error

Response = tuple[int, bytes, bytes]  # status, content type, body

log = logging.getLogger("modelport.runtime")

# Files above this size are spooled to a temporary file while the form is parsed.
FORM_MEMORY_LIMIT = 1024 * 1024
# How long a failed load keeps answering /health 500 before the process exits.
FAILED_EXIT_DELAY_S = 1.0
GRACE_DEFAULT_S, GRACE_MAX_S = 60, 90


def _error(spec: ErrorSpec, **fields: Any) -> Response:
    err = PlatformError(spec, **fields)
    return err.status, JSON, json.dumps(err.body()).encode()


class _BadRequest(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class Streamed:
    """A handler's result that is streamed rather than sent as one body (see `streaming`)."""

    __slots__ = ("items",)

    def __init__(self, items: Any) -> None:
        self.items = items


class HandlerApp:
    """The ASGI app. `state` goes loading -> ready | failed, set by the loader thread."""

    def __init__(
        self,
        package: ModelPackage,
        threads: int,
        model_name: str | None = None,
        model_version: str | None = None,
    ) -> None:
        self.urls = frozenset(package.api_urls)
        self.urls_text = ", ".join(sorted(self.urls))
        self.stream = package.stream
        self.state = "loading"
        self.error = ""
        self.service: Any = None
        self.pool = HandlerPool(threads)
        self._v2_args = (model_name or package.model_name, model_version, package.apis)
        self._v2: Any = None

    def set_ready(self, service: Any) -> None:
        self.service = service
        self.state = "ready"

    def set_failed(self, error: str) -> None:
        self.error = error
        self.state = "failed"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            return
        path: str = scope["path"]
        if path == "/health":
            await _send(send, *self._health())
            return
        if len(path) > 1 and path[-1] == "/":
            path = path.rstrip("/") or "/"
        if path not in self.urls:
            if path == "/v2" or path.startswith("/v2/"):
                await self._open_inference(scope, receive, send)
                return
            await _send(send, *_error(E.RUNTIME_NO_API, method=scope["method"], path=path, urls=self.urls_text))
            return
        service = self.service
        if service is None:
            await _send(send, *_error(E.RUNTIME_NOT_READY, state=self.state))
            return
        try:
            data, is_form = await _read_request(scope, receive)
        except _BadRequest as bad:
            await _send(send, *bad.response)
            return
        try:
            response = await self.pool.run(_predict, service, data)
        except asyncio.CancelledError:
            # Only a shutdown past its grace period cancels us: say so instead of uvicorn's bare 500.
            response = _error(E.RUNTIME_STOPPED)
        if response.__class__ is Streamed:
            try:
                await streaming.respond(scope, receive, send, response.items, self.stream, self.pool)
            finally:
                if is_form:
                    _close_files(data)
            return
        if is_form:
            _close_files(data)
        await _send(send, *response)

    def _health(self) -> Response:
        if self.state == "ready":
            return 200, JSON, b'{"health": "true"}'
        if self.state == "loading":
            return 503, JSON, b'{"health": "false", "status": "loading"}'
        return 500, JSON, json.dumps({"health": "false", "error": self.error}).encode()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if len(path) > 1 and path[-1] == "/":
            path = path.rstrip("/") or "/"
        if path not in self.urls:
            spec, fields = E.RUNTIME_NO_API, {"method": "WebSocket", "path": path, "urls": self.urls_text}
            await websocket.refuse(scope, receive, send, spec, **fields)
        elif self.service is None:
            await websocket.refuse(scope, receive, send, E.RUNTIME_NOT_READY, state=self.state)
        else:
            await websocket.serve_session(scope, receive, send, self.service)

    async def _open_inference(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._v2 is None:
            try:
                from modelport.runtime.v2 import V2Protocol
            except ImportError as exc:  # numpy is not a dependency of the platform itself
                body = json.dumps({"error": f"the V2 protocol needs numpy in this instance ({exc})"})
                await _send(send, 501, JSON, body.encode())
                return
            self._v2 = V2Protocol(*self._v2_args)
        await self._v2(scope, receive, send, self)


def _predict(service: Any, data: Any) -> Response | Streamed:
    """Runs in the pool: user code and encoding of its result, both the model's responsibility."""
    try:
        result = service.inference(data)
        if result.__class__ not in PLAIN_TYPES and is_stream(result):  # inlined check: the hot path
            return Streamed(result)
        content_type, body = encode_result(result)
        return 200, content_type, body
    except BaseException as exc:  # even SystemExit: a handler must not take the server down
        traceback.print_exc()
        return 500, JSON, json.dumps(model_error(exc), ensure_ascii=False).encode()


async def _send(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_request(scope: Scope, receive: Receive) -> tuple[Any, bool]:
    """The parsed body and whether it is a form (whose files must be closed afterwards)."""
    content_type = b""
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
            break
    if content_type.startswith(b"multipart/form-data"):
        return await _read_form(content_type, receive), True
    body = await read_body(receive)
    if not body:
        return {}, False
    media = content_type.split(b";", 1)[0].strip().lower()
    if media == b"application/json" or media.endswith(b"+json"):
        try:
            return json.loads(body), False
        except ValueError as exc:
            raise _BadRequest(_error(E.BAD_JSON, detail=str(exc))) from None
    if not media:
        try:
            return json.loads(body), False
        except ValueError:
            return body, False
    return body, False


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _read_form(content_type: bytes, receive: Receive) -> dict[str, Any]:
    """Stream a multipart body into `{field: {file_name: file}}` / `{field: "value"}` as it arrives."""
    from python_multipart.multipart import FormParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise _BadRequest(_error(E.BAD_FORM, detail="the Content-Type header has no boundary"))
    data: dict[str, Any] = {}

    def on_field(field: Any) -> None:
        value = field.value
        data[_text(field.field_name)] = value.decode("utf-8", "replace") if value is not None else ""

    def on_file(file: Any) -> None:
        stream = file.file_object
        stream.seek(0)
        files = data.setdefault(_text(file.field_name), {})
        if not isinstance(files, dict):  # a plain field of the same name came first
            files = data[_text(file.field_name)] = {}
        files[_text(file.file_name)] = stream

    parser = FormParser(
        "multipart/form-data",
        on_field,
        on_file,
        boundary=boundary,
        config={"MAX_MEMORY_FILE_SIZE": FORM_MEMORY_LIMIT},
    )
    try:
        while True:
            message = await receive()
            parser.write(message.get("body", b""))
            if not message.get("more_body", False):
                break
        parser.finalize()
    except Exception as exc:
        _close_files(data)
        raise _BadRequest(_error(E.BAD_FORM, detail=str(exc) or type(exc).__name__)) from None
    return data


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def _close_files(data: dict[str, Any]) -> None:
    for value in data.values():
        if isinstance(value, dict):
            for stream in value.values():
                close = getattr(stream, "close", None)
                if close is not None:
                    close()


def _load_in_background(app: HandlerApp, package: ModelPackage, on_failure: Callable[[], None]) -> None:
    def load() -> None:
        started = time.monotonic()
        try:
            from modelport.runtime.loader import load_service

            service = load_service(package)
        except BaseException as exc:  # whatever the user's code raised (even SystemExit) is reported
            print(f"modelport runtime: loading {package.model_dir} failed:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            app.set_failed(f"{type(exc).__name__}: {exc}")
            on_failure()
            return
        app.set_ready(service)
        log.info("model %s ready in %.2f s", package.model_name, time.monotonic() - started)
        _warm_v2()

    threading.Thread(target=load, name="model-loader", daemon=True).start()


def _warm_v2() -> None:
    """Import the V2 adapter off the request path when the model already brought numpy in.

    A model without numpy does not pay its memory unless a V2 call comes (then the first one
    waits for the import).
    """
    if "numpy" in sys.modules:
        with contextlib.suppress(ImportError):
            import modelport.runtime.v2  # noqa: F401


def _env_number(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return min(max(int(raw), low), high)
    except ValueError:
        log.warning("%s=%r is not a whole number; using %d", name, raw, default)
        return default


def serve(package: ModelPackage, host: str, port: int) -> int:
    """Serve `package` until SIGTERM/SIGINT (exit code 0) or a failed load (1). Blocks."""
    import uvicorn

    _setup_logging()
    threads = _env_number("MODELPORT_HANDLER_THREADS", 4, 1, 1024)
    grace = _env_number("MODELPORT_GRACE_S", GRACE_DEFAULT_S, 0, GRACE_MAX_S)
    ws_max = _env_number("MODELPORT_WS_MAX_BYTES", websocket.WS_MAX_BYTES_DEFAULT, 1024, 1 << 30)
    app = HandlerApp(
        package,
        threads,
        os.environ.get("MODELPORT_MODEL_NAME") or None,
        os.environ.get("MODELPORT_MODEL_VERSION") or None,
    )
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        loop=loop,
        lifespan="off",
        access_log=False,
        server_header=False,
        log_level="info",
        timeout_graceful_shutdown=grace,
        # Spec §4: the dispatcher reuses idle connections for up to ~200 s.
        timeout_keep_alive=200,
        ws="auto",  # uvicorn[standard] brings `websockets`
        ws_max_size=ws_max,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(_drop_denial_noise)

    def stop_after_failure() -> None:
        timer = threading.Timer(FAILED_EXIT_DELAY_S, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()

    def on_term(signum: int, frame: Any) -> None:
        # uvicorn swaps in its own handler while it runs and re-raises the signal at the end of a
        # graceful shutdown, which would turn the clean exit into "killed by SIGTERM".
        if not server.started:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info(
        "serving %s (%s) on %s:%d, urls %s",
        package.model_name,
        package.model_type,
        host,
        port,
        app.urls_text,
    )
    _load_in_background(app, package, stop_after_failure)
    server.run()
    code = 1 if app.state == "failed" else 0
    app.pool.close()
    return code


def _drop_denial_noise(record: logging.LogRecord) -> bool:
    # uvicorn's websockets-sansio logs this after every `websocket.http.response` refusal although
    # the client got the refusal (upstream bug, Kludex/uvicorn PR 3138); our app never returns
    # without accepting or refusing, so the line would only mislead whoever reads the log.
    return record.msg != "ASGI callable returned without completing handshake."


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
