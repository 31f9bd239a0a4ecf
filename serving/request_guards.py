"""Guards at the ASGI edge, before any route reads or parses a request.

- **Body cap.** A `Content-Length` above the route's limit is answered at once; a body without
  one is counted as it streams in and refused the moment it passes the limit, so an oversized
  body is never read in full. `413 invalid_input` naming `body`. Most routes take at most
  `settings.max_body_bytes`; the upload routes take their documented file size plus room for the
  multipart or base64 framing (the routes still enforce the exact file cap themselves).
- **NUL characters.** No identifier, name or text this service stores can hold U+0000
  (PostgreSQL refuses it), so it is refused wherever a client controls a string: the path
  (named by the route's path parameter), query names and values, header and cookie values, JSON
  strings and keys, urlencoded and multipart text fields. `400 invalid_input` naming the field.

Errors are the seed's error JSON (`X-Request-Id` is added by the request-id middleware around
this one); under `/mcp` they are a JSON-RPC error carrying the same object in `data`, which MCP
clients show as the call's error.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import cookie_parser
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retouch.pipelines.vocabulary import MAX_IMAGE_BYTES

from .core.errors import InvalidInput
from .errors import error_body, new_request_id

FRAMING_BYTES = 1024 * 1024  # multipart headers and boundaries, the other JSON fields
BASE64_IMAGE_BYTES = (MAX_IMAGE_BYTES + 2) // 3 * 4
UPLOAD_ROUTES: dict[tuple[str, str], int] = {  # (method, path template) → body limit
    ("POST", "/api/v1/uploads"): MAX_IMAGE_BYTES + FRAMING_BYTES,
    ("POST", "/v1/projects/{project_id}/pictures"): BASE64_IMAGE_BYTES + FRAMING_BYTES,
    ("POST", "/dashboard/generations"): 2 * MAX_IMAGE_BYTES + FRAMING_BYTES,  # image + mask
}
NUL = "\x00"


def nul_message(field: str) -> InvalidInput:
    return InvalidInput(field, "must not contain NUL (U+0000) characters")


def too_large(limit: int) -> InvalidInput:
    return InvalidInput("body", f"is larger than {limit} bytes", http_status=413)


def _printable(name: str) -> str:
    return name.replace(NUL, "\\x00")


# ---- where a NUL is ---------------------------------------------------------------------------
def nul_in_json(value: Any, path: str = "") -> str | None:
    """The field path (`input.images[0].upload_id`) of the first string holding a NUL; for a NUL
    in an object key, the path of that object (`body` at the top)."""
    if isinstance(value, str):
        return (path or "body") if NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if NUL in key:
                return path or "body"
            found = nul_in_json(item, f"{path}.{key}" if path else key)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_in_json(item, f"{path}[{index}]")
            if found:
                return found
    return None


def nul_in_pairs(pairs: list[tuple[str, str]]) -> str | None:
    for name, value in pairs:
        if NUL in name or NUL in value:
            return _printable(name)
    return None


def route_templates(app) -> list[str]:
    """The path template of every route of `app` (`/api/v1/generations/{generation_id}`).
    FastAPI includes routers lazily; `iter_route_contexts` walks them where it exists."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI versions that copy included routes into `app.routes`
        return [path for route in app.routes if (path := getattr(route, "path", None))]
    return [path for context in iter_route_contexts(app.routes) if (path := context.path)]


def nul_in_path(scope: Scope, templates: list[str]) -> str | None:
    """The path parameter holding a NUL (`generation_id`), else `path`; None without a NUL."""
    path = scope.get("path", "")
    if NUL not in path:
        return None
    for template in templates:
        match = compile_path(template)[0].match(path)
        if match:
            for name, value in match.groupdict().items():
                if NUL in value:
                    return name
    return "path"


def nul_in_request_line(scope: Scope) -> str | None:
    """A NUL in the query string, a header or a cookie: the field it is in."""
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        field = nul_in_pairs(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
        if field:
            return field
    for name, value in scope.get("headers", []):
        if b"\x00" in value:
            return name.decode("latin-1")
        if name == b"cookie" and b"\\" in value:  # quoted cookies may spell NUL as \000
            field = nul_in_pairs(list(cookie_parser(value.decode("latin-1")).items()))
            if field:
                return field
    return None


def nul_in_body(body: bytes, content_type: str) -> tuple[str | None, Any]:
    """(field with a NUL or None, the JSON-RPC id when the body is a JSON object with one)."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        if b"%00" in body or b"\x00" in body:
            return nul_in_pairs(parse_qsl(body.decode("latin-1"), keep_blank_values=True)), None
        return None, None
    if b"\\u0000" not in body:  # JSON can only carry a NUL escaped
        return None, None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None, None  # not JSON: the route reports it
    request_id = parsed.get("id") if isinstance(parsed, dict) else None
    return nul_in_json(parsed), request_id


class MultipartTextScanner:
    """Streams a multipart body through python-multipart and notes the first text (non-file)
    part holding a NUL. Malformed bodies are left for the route to report."""

    def __init__(self, content_type: str):
        self.field: str | None = None
        self._header_name, self._header_value = b"", b""
        self._part_name: str | None = None
        self._text_part = False
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_part_data": self._part_data}) if boundary else None

    def feed(self, chunk: bytes) -> None:
        if self._parser is None or self.field is not None or not chunk:
            return
        try:
            self._parser.write(chunk)
        except Exception:  # malformed: the route's own parser answers for it
            self._parser = None

    def _part_begin(self) -> None:
        self._part_name, self._text_part = None, False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            _, params = parse_options_header(self._header_value)
            self._part_name = params.get(b"name", b"").decode("utf-8", "replace")
            self._text_part = b"filename" not in params
            if NUL in self._part_name:
                self.field = "body"
        self._header_name, self._header_value = b"", b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._text_part and self.field is None and b"\x00" in data[start:end]:
            self.field = _printable(self._part_name or "body")


class _Refused(Exception):
    """A body refused while it streams in (raised from `receive` into the app)."""


# ---- the middleware ---------------------------------------------------------------------------
class RequestGuardMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int,
                 upload_routes: dict[tuple[str, str], int] | None = None,
                 json_rpc_paths: tuple[str, ...] = ()):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_routes = [(method, compile_path(template)[0], limit)
                              for (method, template), limit in (upload_routes or {}).items()]
        self.json_rpc_paths = json_rpc_paths
        self._templates: list[str] | None = None

    def templates(self, scope: Scope) -> list[str]:
        """The app's route templates, collected once (only needed to name a bad path)."""
        if self._templates is None and NUL in scope.get("path", ""):
            self._templates = route_templates(scope["app"])
        return self._templates or []

    def body_limit(self, scope: Scope) -> int:
        for method, pattern, limit in self.upload_routes:
            if scope.get("method") == method and pattern.match(scope.get("path", "")):
                return max(limit, self.max_body_bytes)
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        field = nul_in_path(scope, self.templates(scope)) or nul_in_request_line(scope)
        if field:
            await self.refuse(scope, send, nul_message(field))
            return
        limit = self.body_limit(scope)
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            await self.refuse(scope, send, too_large(limit))
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if content_type.startswith("multipart/form-data"):
            await self.stream_checked(scope, receive, send, limit,
                                      MultipartTextScanner(content_type))
            return
        try:
            body = await read_body(receive, limit)
        except _Refused:
            await self.refuse(scope, send, too_large(limit))
            return
        if body is None:
            return  # the client went away
        field, rpc_id = nul_in_body(body, content_type)
        if field:
            await self.refuse(scope, send, nul_message(field), rpc_id=rpc_id)
            return
        await self.app(scope, replay(body, receive), send)

    async def stream_checked(self, scope: Scope, receive: Receive, send: Send, limit: int,
                             scanner: MultipartTextScanner) -> None:
        """Pass a streamed body to the app while counting and scanning it; once refused, the
        app's own answer is dropped and the refusal sent instead."""
        refusal: list[InvalidInput] = []
        received = 0
        started = False

        async def checked_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request" and not refusal:
                chunk = message.get("body", b"")
                received += len(chunk)
                scanner.feed(chunk)
                if received > limit:
                    refusal.append(too_large(limit))
                elif scanner.field:
                    refusal.append(nul_message(scanner.field))
                if refusal:
                    raise _Refused
            return message

        async def checked_send(message: Message) -> None:
            nonlocal started
            if refusal and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, checked_receive, checked_send)
        except Exception:
            if not refusal or started:
                raise
        if refusal and not started:
            await self.refuse(scope, send, refusal[0])

    async def refuse(self, scope: Scope, send: Send, error: InvalidInput, *,
                     rpc_id: Any = None) -> None:
        request_id = scope.get("state", {}).get("request_id") or new_request_id()
        body: dict[str, Any] = error_body(error, request_id)
        if scope.get("path") in self.json_rpc_paths:
            code = -32600 if error.http_status == 413 else -32602  # invalid request / params
            body = {"jsonrpc": "2.0", "id": rpc_id if isinstance(rpc_id, (str, int)) else None,
                    "error": {"code": code, "message": error.message, "data": body}}
        data = json.dumps(body).encode("utf-8")
        await send({"type": "http.response.start", "status": error.http_status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode("latin-1")),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None if the client disconnected; `_Refused` once past `limit`."""
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise _Refused
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the buffered body once, then defers to the real one (which
    reports the disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def install_request_guards(app, settings) -> None:
    """Add the guards to `app`; call before the request-id middleware is added (so it wraps
    them and its id is in their errors)."""
    from .mcp.oauth import MCP_PATH

    app.add_middleware(RequestGuardMiddleware, max_body_bytes=settings.max_body_bytes,
                       upload_routes=UPLOAD_ROUTES, json_rpc_paths=(MCP_PATH,))
