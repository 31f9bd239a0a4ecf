"""The one error mapper: every failure becomes the seed's error JSON with a request id.

`{"object": "error", "error": {"code", "message", "details"}, "request_id": "req_..."}`, the
error's HTTP status and headers, and `X-Request-Id` on every response (success included).
Unknown failures are logged and answered `service_unavailable` (503), never with a stack trace.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retouch.pipelines.errors import PipelineInputError

from .core.errors import (ERROR_STATUS, InvalidInput, RetouchError, ServiceUnavailable,
                          invalid_input_from, invalid_input_from_validation)

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def request_id(request: Request) -> str:
    """The id the middleware assigned to this request (one is made if it ran outside it)."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = new_request_id()
    return rid


async def request_id_of(request: Request) -> str:
    """`request_id` as a route dependency (async: FastAPI runs it on the loop, no thread hop)."""
    return request_id(request)


# ---- the error shape in OpenAPI (both surfaces) ---------------------------------------------
class ErrorDetail(BaseModel):
    code: Literal[tuple(ERROR_STATUS)]  # type: ignore[valid-type]
    message: str
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    object: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str = Field(examples=["req_0123456789abcdef0123456789abcdef"])


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the error statuses a route can answer."""
    codes_by_status: dict[int, list[str]] = {}
    for code, status in ERROR_STATUS.items():
        codes_by_status.setdefault(status, []).append(code)
    codes_by_status.setdefault(404, []).append("invalid_input")
    return {status: {"model": ErrorResponse,
                     "description": "Error: " + ", ".join(codes_by_status.get(status, []))}
            for status in sorted(set(statuses))}


def cancel_conflict_response() -> dict[int | str, dict[str, Any]]:
    """The 409 of a cancel route: the job had already finished (nothing changed)."""
    return {409: {"model": ErrorResponse, "description": "Error: invalid_input (the job has "
                                                         "already finished; `details.status`)"}}


def error_body(error: RetouchError, request_id: str) -> dict[str, Any]:
    return {"object": "error", "error": error.to_dict(), "request_id": request_id}


def error_response(request: Request, error: RetouchError) -> JSONResponse:
    rid = request_id(request)
    headers = {**error.headers, REQUEST_ID_HEADER: rid}
    return JSONResponse(error_body(error, rid), status_code=error.http_status, headers=headers)


def validation_error(exc: RequestValidationError) -> InvalidInput:
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return InvalidInput("body", "is not valid JSON")
    return invalid_input_from_validation(errors, skip=REQUEST_PARTS)


REQUEST_PARTS = ("body", "query", "path", "header", "cookie")


async def _retouch_error(request: Request, exc: RetouchError) -> JSONResponse:
    return error_response(request, exc)


async def _pipeline_input_error(request: Request, exc: PipelineInputError) -> JSONResponse:
    return error_response(request, invalid_input_from(exc))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(request, validation_error(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown routes, wrong methods and the like keep the error shape, code invalid_input.
    if exc.status_code >= 500:
        error: RetouchError = ServiceUnavailable("The service is temporarily unavailable.")
    else:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        error = InvalidInput("path", message, http_status=exc.status_code)
        error.message = message
    error.headers = dict(exc.headers or {})
    return error_response(request, error)


class RequestIdMiddleware:
    """Assigns `req_...` to each request and echoes it as `X-Request-Id` on every response.

    Unhandled exceptions are turned into the 503 error JSON here too, so nothing escapes as a
    bare 500 (Starlette's ServerErrorMiddleware would otherwise answer text).
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != REQUEST_ID_HEADER.lower().encode()]
                headers.append((REQUEST_ID_HEADER.lower().encode(), rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error (request %s)", rid)
            if started:
                raise
            body = json.dumps(error_body(
                ServiceUnavailable("The service is temporarily unavailable; try again later."),
                rid)).encode()
            await send_with_id({"type": "http.response.start", "status": 503,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
            await send_with_id({"type": "http.response.body", "body": body})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RetouchError, _retouch_error)
    app.add_exception_handler(PipelineInputError, _pipeline_input_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(RequestIdMiddleware)
