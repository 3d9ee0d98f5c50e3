"""The LLM instance: an OpenAI-compatible HTTP server around the async engine.

It obeys the instance contract (design.md): listens on `$HOST:$PORT`; `GET /health` answers 503
`{"health": "false", "status": "loading"}` while the model loads (in a background thread: weights,
KV pool allocation, warm-up), 200 `{"health": "true"}` when it can serve, 500 when loading failed
(the process then exits 1) or the engine died. SIGTERM stops accepting connections, lets the
requests in flight finish (up to `MODELPORT_GRACE_S`, default 60, at most 90 s) and exits 0.
Logs go to stderr.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (see `protocol`
for parameters; `stream: true` answers Server-Sent Events in OpenAI's chunk format ending with
`data: [DONE]`), `GET /metrics` (Prometheus, see `metrics`), `GET /v1/engine/stats` (the
engine's counters and gauges as JSON, for ShowService and for prefix-aware routing).
A request whose client disconnects is aborted and its KV blocks freed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from modelport.llm import protocol as p
from modelport.llm.config import EngineConfig
from modelport.llm.engine import (
    AsyncLLMEngine,
    EngineDeadError,
    GenerationRequest,
    InvalidRequest,
    LLMEngine,
    load_tokenizer,
)
from modelport.llm.metrics import LLMMetrics
from modelport.llm.request import RequestOutput, SamplingParams

log = logging.getLogger("modelport.llm")

FAILED_EXIT_DELAY_S = 1.0
GRACE_DEFAULT_S, GRACE_MAX_S = 60, 90
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class LLMServer:
    """The instance's state: loading → ready, or failed; the engine once ready."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_name = config.served_model_name
        self.metrics = LLMMetrics(self.model_name)
        self.status = "loading"
        self.error: str | None = None
        self.engine: AsyncLLMEngine | None = None
        # The API side (event loop) tokenizes with its own instance: a Hugging Face fast tokenizer
        # may raise "Already borrowed" when two threads use one, and the engine thread detokenizes.
        self.tokenizer: Any = None
        self.created = int(time.time())

    def start_loading(self, on_failure: Any = None) -> None:
        loop = asyncio.get_running_loop()

        def load() -> None:
            started = time.monotonic()
            try:
                engine = LLMEngine(self.config, observer=self.metrics)
                self.tokenizer = load_tokenizer(self.config.checkpoint)
            except BaseException as exc:
                log.exception("loading %s failed", self.config.checkpoint)
                self.error = f"{type(exc).__name__}: {exc}"
                self.status = "failed"
                if on_failure is not None:
                    on_failure()
                return
            log.info("model %s ready in %.2f s", self.model_name, time.monotonic() - started)
            loop.call_soon_threadsafe(self._ready, engine)

        threading.Thread(target=load, name="llm-loader", daemon=True).start()

    def _ready(self, engine: LLMEngine) -> None:
        self.engine = AsyncLLMEngine(engine)
        self.engine.start()
        self.metrics.attach(engine.snapshot)
        self.status = "ready"

    def require_engine(self) -> AsyncLLMEngine:
        if self.engine is None or self.engine.error is not None:
            status = 503 if self.status == "loading" else 500
            raise p.APIError(f"the model is {self.status}", status=status, type="service_unavailable")
        return self.engine

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise p.APIError(
                f"The model `{model}` does not exist; this instance serves `{self.model_name}`.",
                "model",
                status=404,
                code="model_not_found",
            )


def create_app(server: LLMServer, on_load_failure: Any = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.start_loading(on_load_failure)
        yield
        if server.engine is not None:
            server.engine.shutdown()

    app = FastAPI(title="modelport LLM instance", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(p.APIError)
    async def api_error(request: Request, exc: p.APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/health")
    async def health() -> JSONResponse:
        if server.status == "ready" and server.engine is not None and server.engine.error is None:
            return JSONResponse({"health": "true"})
        if server.status == "loading":
            return JSONResponse({"health": "false", "status": "loading"}, status_code=503)
        error = server.error or (server.engine.error if server.engine else None)
        return JSONResponse({"health": "false", "status": "failed", "error": error}, status_code=500)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card: dict[str, Any] = {
            "id": server.model_name,
            "object": "model",
            "created": server.created,
            "owned_by": "modelport",
        }
        if server.engine is not None:
            card["max_model_len"] = server.engine.engine.max_model_len
        return {"object": "list", "data": [card]}

    @app.get("/v1/engine/stats")
    async def engine_stats() -> dict[str, Any]:
        engine = server.require_engine()
        return {"status": server.status, **engine.engine.snapshot()}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        engine = server.require_engine()
        req: p.CompletionRequest = p.parse(p.CompletionRequest, await _json(request))
        server.check_model(req.model)
        if req.echo:
            raise p.APIError("echo is not supported", "echo")
        if req.suffix:
            raise p.APIError("suffix is not supported", "suffix")
        params = p.sampling_params(req, 16 if req.max_tokens is None else req.max_tokens, req.logprobs)
        tok = server.tokenizer
        prompts = [x if isinstance(x, list) else tok.encode(x) for x in p.completion_prompts(req)]
        gen = _expand(engine, prompts, params, req.n, req.cache_salt)
        call = _Call(server, engine, gen, req.n, len(prompts), "cmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(request, call.stream_completion(include_usage))
        return JSONResponse(await _unless_disconnected(request, call.complete_completion()))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        engine = server.require_engine()
        req: p.ChatCompletionRequest = p.parse(p.ChatCompletionRequest, await _json(request))
        server.check_model(req.model)
        if req.top_logprobs is not None and not req.logprobs:
            raise p.APIError("top_logprobs requires logprobs to be true", "top_logprobs")
        tok = server.tokenizer
        try:
            text = tok.apply_chat_template(p.chat_messages(req), tokenize=False, add_generation_prompt=True)
        except p.APIError:
            raise
        except Exception as exc:  # no template, or the template rejected the conversation
            raise p.APIError(f"cannot apply the chat template: {exc}", "messages") from None
        prompt = tok.encode(text, add_special_tokens=False)
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is None:
            max_tokens = max(engine.engine.max_model_len - len(prompt), 1)
        params = p.sampling_params(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
        gen = _expand(engine, [prompt], params, req.n, req.cache_salt)
        call = _Call(server, engine, gen, req.n, 1, "chatcmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(request, call.stream_chat(include_usage))
        return JSONResponse(await _unless_disconnected(request, call.complete_chat()))

    return app


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise p.APIError(f"the request body is not valid JSON: {exc}") from None


def _expand(
    engine: AsyncLLMEngine, prompts: list[list[int]], params: SamplingParams, n: int, salt: str | None
) -> list[GenerationRequest]:
    """One engine request per (prompt, choice); choice j of a seeded request uses seed + j."""
    out = []
    for prompt in prompts:
        for j in range(n):
            choice_params = params if params.seed is None else replace(params, seed=params.seed + j)
            try:
                engine.engine.check_request(prompt, choice_params)
            except InvalidRequest as exc:
                raise p.APIError(str(exc), exc.param) from None
            out.append(GenerationRequest(prompt, choice_params, salt))
    return out


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it (which aborts its engine requests) if the client goes away."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        log.info("client disconnected; request aborted")
        return None
    return task.result()


def _sse(request: Request, chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


class _Call:
    """One API call: `num_prompts * n` engine requests whose outputs become choices."""

    def __init__(
        self,
        server: LLMServer,
        engine: AsyncLLMEngine,
        requests: list[GenerationRequest],
        n: int,
        num_prompts: int,
        prefix: str,
    ) -> None:
        self.server = server
        self.engine = engine
        self.requests = requests
        self.n = n
        self.num_prompts = num_prompts
        self.id = p.new_id(prefix)
        self.created = p.now()
        self.logprobs = p.LogprobFormatter(server.tokenizer)
        self.finals: dict[int, RequestOutput] = {}

    def usage(self) -> dict[str, Any]:
        firsts = [self.finals[i * self.n] for i in range(self.num_prompts) if i * self.n in self.finals]
        return p.usage(
            sum(o.num_prompt_tokens for o in firsts),
            sum(o.num_output_tokens for o in self.finals.values()),
            sum(o.num_cached_tokens for o in firsts),
        )

    async def _outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        try:
            async for index, output in self.engine.generate(self.requests):
                if output.finished:
                    self.finals[index] = output
                yield index, output
        except EngineDeadError as exc:
            raise p.APIError(f"the engine failed: {exc}", status=500, type="internal_error") from None

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.server.model_name}

    # -- /v1/completions ------------------------------------------------------------------------

    async def _collect(self) -> list[tuple[str, list[Any], Any]]:
        """Every choice's whole text, logprobs and final output, once all requests have finished."""
        k = len(self.requests)
        texts, lps = [""] * k, [[] for _ in range(k)]  # type: list[str], list[list[Any]]
        async for i, out in self._outputs():
            texts[i] += out.new_text
            lps[i] += out.new_logprobs or []
        return [(texts[i], lps[i], self.finals[i]) for i in range(k)]

    def _choice(self, i: int, final: Any, body: dict[str, Any]) -> dict[str, Any]:
        return {"index": i, **body, "finish_reason": p.finish_reason(final), "stop_reason": final.stop_reason}

    def _wants_logprobs(self, i: int) -> bool:
        return self.requests[i].params.logprobs is not None

    async def complete_completion(self) -> dict[str, Any]:
        choices = [
            self._choice(
                i,
                final,
                {"text": text, "logprobs": self.logprobs.completion(lps, 0) if self._wants_logprobs(i) else None},
            )
            for i, (text, lps, final) in enumerate(await self._collect())
        ]
        return {**self._head("text_completion"), "choices": choices, "usage": self.usage()}

    async def stream_completion(self, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        offsets = [0] * len(self.requests)
        try:
            async for i, out in self._outputs():
                if not (out.new_text or out.finished or out.new_logprobs):
                    continue
                lp = None
                if self.requests[i].params.logprobs is not None:
                    lp = self.logprobs.completion(out.new_logprobs or [], offsets[i])
                offsets[i] += len(out.new_text)
                choice = {
                    "index": i,
                    "text": out.new_text,
                    "logprobs": lp,
                    "finish_reason": p.finish_reason(out),
                    "stop_reason": out.stop_reason,
                }
                yield {**self._head("text_completion"), "choices": [choice]}
        except p.APIError as exc:
            yield exc.body()
            return
        if include_usage:
            yield {**self._head("text_completion"), "choices": [], "usage": self.usage()}

    # -- /v1/chat/completions -------------------------------------------------------------------

    async def complete_chat(self) -> dict[str, Any]:
        choices = [
            self._choice(
                i,
                final,
                {
                    "message": {"role": "assistant", "content": text},
                    "logprobs": self.logprobs.chat(lps) if self._wants_logprobs(i) else None,
                },
            )
            for i, (text, lps, final) in enumerate(await self._collect())
        ]
        return {**self._head("chat.completion"), "choices": choices, "usage": self.usage()}

    async def stream_chat(self, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        head = self._head("chat.completion.chunk")
        for i in range(len(self.requests)):
            role = {
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            yield {**head, "choices": [role]}
        try:
            async for i, out in self._outputs():
                if not (out.new_text or out.finished or out.new_logprobs):
                    continue
                want = self.requests[i].params.logprobs is not None
                choice = {
                    "index": i,
                    "delta": {"content": out.new_text} if out.new_text else {},
                    "logprobs": self.logprobs.chat(out.new_logprobs or []) if want else None,
                    "finish_reason": p.finish_reason(out),
                }
                if out.finished:
                    choice["stop_reason"] = out.stop_reason
                yield {**head, "choices": [choice]}
        except p.APIError as exc:
            yield exc.body()
            return
        if include_usage:
            yield {**head, "choices": [], "usage": self.usage()}


# -- the process ------------------------------------------------------------------------------


def _env_seconds(name: str, default: int, high: int) -> int:
    raw = os.environ.get(name)
    try:
        return min(max(int(raw), 0), high) if raw else default
    except ValueError:
        log.warning("%s=%r is not a whole number; using %d", name, raw, default)
        return default


def setup_logging() -> None:
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def serve(config: EngineConfig, host: str, port: int) -> int:
    """Serve until SIGTERM/SIGINT (exit code 0) or a failed load (1). Blocks."""
    import uvicorn

    setup_logging()
    server = LLMServer(config)
    holder: dict[str, uvicorn.Server] = {}

    def stop_after_failure() -> None:
        threading.Timer(FAILED_EXIT_DELAY_S, lambda: setattr(holder["server"], "should_exit", True)).start()

    app = create_app(server, stop_after_failure)
    uv = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        lifespan="on",
        access_log=False,
        server_header=False,
        log_level="info",
        timeout_graceful_shutdown=_env_seconds("MODELPORT_GRACE_S", GRACE_DEFAULT_S, GRACE_MAX_S),
        timeout_keep_alive=200,  # spec §4: the dispatcher reuses idle connections for ~200 s
    )
    holder["server"] = uvicorn_server = uvicorn.Server(uv)

    def on_term(signum: int, frame: Any) -> None:
        # uvicorn installs its own handler while it runs; this one covers the time before that.
        if not uvicorn_server.started:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info("serving %s (%s) on %s:%d", config.served_model_name, Path(config.checkpoint), host, port)
    uvicorn_server.run()
    return 1 if server.status == "failed" else 0
