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

The request path is a raw ASGI app (no framework) because per-request overhead is what
bounds the throughput of small models.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from modelport.errors import E, ErrorSpec, PlatformError
from modelport.packages import ModelPackage

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Response = tuple[int, bytes, bytes]  # status, content type, body

log = logging.getLogger("modelport.runtime")

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
OCTETS = b"application/octet-stream"
MODEL_ERROR_CODE = "MR.0105"
# Files above this size are spooled to a temporary file while the form is parsed.
FORM_MEMORY_LIMIT = 1024 * 1024
# How long a failed load keeps answering /health 500 before the process exits.
FAILED_EXIT_DELAY_S = 1.0
HANDLER_THREAD_PREFIX = "modelport-handler"
GRACE_DEFAULT_S, GRACE_MAX_S = 60, 90


def _json_default(obj: Any) -> Any:
    # numpy arrays and scalars are the usual non-JSON results of model code.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def encode_result(result: Any) -> tuple[bytes, bytes]:
    """The handler's result as (content type, body)."""
    if isinstance(result, bytes | bytearray | memoryview):
        return OCTETS, bytes(result)
    if isinstance(result, str):
        # ModelArts code often returns json.dumps(...) from _postprocess.
        return (JSON if result.lstrip()[:1] in ("{", "[") else TEXT), result.encode()
    return JSON, json.dumps(result, ensure_ascii=False, default=_json_default).encode()


def _error(spec: ErrorSpec, **fields: Any) -> Response:
    err = PlatformError(spec, **fields)
    return err.status, JSON, json.dumps(err.body()).encode()


class _BadRequest(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class HandlerPool:
    """A fixed set of daemon threads running handler calls for the event loop.

    Leaner than `loop.run_in_executor` (one queue put and one loop callback per call, no
    concurrent.futures wrapping), which measurably raises throughput for small models. Daemon
    threads, so a handler still stuck after the grace period cannot keep the process alive.
    """

    def __init__(self, threads: int) -> None:
        self._jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Any, Any] | None]
        self._jobs = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{HANDLER_THREAD_PREFIX}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, service: Any, data: Any) -> asyncio.Future[Response]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Response] = loop.create_future()
        self._jobs.put((loop, future, service, data))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        get = self._jobs.get
        while (job := get()) is not None:
            loop, future, service, data = job
            response = _predict(service, data)
            try:
                loop.call_soon_threadsafe(_resolve, future, response)
            except RuntimeError:  # loop closed: the server is gone, nobody waits for this answer
                return


def _resolve(future: asyncio.Future[Response], response: Response) -> None:
    if not future.done():  # the request may have been cancelled (client gone, grace period over)
        future.set_result(response)


class HandlerApp:
    """The ASGI app. `state` goes loading -> ready | failed, set by the loader thread."""

    def __init__(self, urls: tuple[str, ...], threads: int) -> None:
        self.urls = frozenset(urls)
        self.urls_text = ", ".join(sorted(self.urls))
        self.state = "loading"
        self.error = ""
        self.service: Any = None
        self.pool = HandlerPool(threads)

    def set_ready(self, service: Any) -> None:
        self.service = service
        self.state = "ready"

    def set_failed(self, error: str) -> None:
        self.error = error
        self.state = "failed"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not part of this runtime
            return
        path: str = scope["path"]
        if path == "/health":
            await _send(send, *self._health())
            return
        if len(path) > 1 and path[-1] == "/":
            path = path.rstrip("/") or "/"
        if path not in self.urls:
            await _send(
                send, *_error(E.RUNTIME_NO_API, method=scope["method"], path=path, urls=self.urls_text)
            )
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
            response = await self.pool.run(service, data)
        except asyncio.CancelledError:
            # Only a shutdown past its grace period cancels us: say so instead of uvicorn's bare 500.
            response = _error(E.RUNTIME_STOPPED)
        finally:
            if is_form:
                _close_files(data)
        await _send(send, *response)

    def _health(self) -> Response:
        if self.state == "ready":
            return 200, JSON, b'{"health": "true"}'
        if self.state == "loading":
            return 503, JSON, b'{"health": "false", "status": "loading"}'
        return 500, JSON, json.dumps({"health": "false", "error": self.error}).encode()


def _predict(service: Any, data: Any) -> Response:
    """Runs in the pool: user code and encoding of its result, both the model's responsibility."""
    try:
        content_type, body = encode_result(service.inference(data))
        return 200, content_type, body
    except BaseException as exc:  # even SystemExit: a handler must not take the server down
        traceback.print_exc()
        msg = {"erno": MODEL_ERROR_CODE, "msg": f"{type(exc).__name__}: {exc}"}
        return 500, JSON, json.dumps(msg, ensure_ascii=False).encode()


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
    body = await _read_body(receive)
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


async def _read_body(receive: Receive) -> bytes:
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

    threading.Thread(target=load, name="model-loader", daemon=True).start()


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
    app = HandlerApp(package.api_urls, threads)
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
    )
    server = uvicorn.Server(config)

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


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
