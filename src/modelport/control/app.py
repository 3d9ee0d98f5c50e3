"""The management API application: routers, error rendering, `/metrics`."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelport import __version__
from modelport.control import (
    apps_api,
    auth_api,
    credentials_api,
    iam_api,
    internal_api,
    logs_api,
    models_api,
    services_api,
)
from modelport.control.body_limit import BodyLimit
from modelport.errors import E, PlatformError

if TYPE_CHECKING:
    from modelport.platform import Platform

log = logging.getLogger("modelport.api")


def _request_id(request: Request) -> str:
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def _error(request: Request, exc: PlatformError) -> JSONResponse:
    rid = _request_id(request)
    headers = {"X-Request-Id": rid}
    if exc.fields.get("retry_after") is not None:
        headers["Retry-After"] = str(exc.fields["retry_after"])
    return JSONResponse(exc.body(rid), status_code=exc.status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "json_invalid":
            return "body is not valid JSON"
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def create_app(platform: Platform) -> FastAPI:
    app = FastAPI(
        title="modelport management API",
        version=__version__,
        description="ModelArts-compatible inference management API. Predictions go to /v1/infers/{service_id}.",
    )
    app.state.platform = platform

    @app.exception_handler(PlatformError)
    async def _platform_error(request: Request, exc: PlatformError) -> JSONResponse:
        return _error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _validation_detail(exc)
        if detail == "body is not valid JSON":
            return _error(request, PlatformError(E.BAD_JSON, detail="the body could not be parsed"))
        return _error(request, PlatformError(E.INVALID_ARGUMENT, detail=detail))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            return _error(request, PlatformError(E.METHOD_NOT_ALLOWED, method=request.method, path=request.url.path))
        if exc.status_code == 400:  # FastAPI: a body it could not parse (e.g. JSON nested too deep)
            return _error(request, PlatformError(E.BAD_JSON, detail="the body could not be parsed"))
        return _error(request, PlatformError(E.NOT_FOUND, method=request.method, path=request.url.path))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = _request_id(request)
        log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path, rid)
        err = PlatformError(E.INTERNAL, detail=type(exc).__name__, request_id=rid)
        return JSONResponse(err.body(rid), status_code=500, headers={"X-Request-Id": rid})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.include_router(auth_api.router)
    app.include_router(models_api.router)
    app.include_router(services_api.router)
    app.include_router(logs_api.router)
    app.include_router(iam_api.router)
    app.include_router(credentials_api.router)
    app.include_router(apps_api.router)
    app.include_router(internal_api.router)
    app.add_middleware(BodyLimit, limit=platform.settings.api_max_body_bytes)
    return app
