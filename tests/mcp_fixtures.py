"""Helpers for the MCP tests: the app served by uvicorn on a loopback port (the SDK's Streamable
HTTP client needs a real server), accounts, keys and members, and an MCP client session."""

from __future__ import annotations

import json
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import uvicorn
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from retouch.serving.app import build_app
from retouch.serving.core import accounts, keys, members
from retouch.serving.core.db import transaction
from retouch.serving.services import Services, build_services
from retouch.serving.settings import Settings

from serve_process import free_port


@dataclass
class Served:
    base_url: str
    services: Services

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    def account(self, plan: str = "pro", credits: int = 100_000) -> str:
        with transaction(self.services.session_factory) as session:
            return accounts.create_account(session, "mcp test", plan=plan, credits=credits).id

    def key(self, account_id: str | None = None, **options) -> tuple[str, str]:
        account_id = account_id or self.account()
        with transaction(self.services.session_factory) as session:
            key, secret = keys.create_key(session, account_id, **options)
            return key.id, secret

    def member(self, account_id: str, email: str, password: str) -> str:
        with transaction(self.services.session_factory) as session:
            return members.create_member(session, account_id, email, password).id


@contextmanager
def serve_app(tmp_path, *, executor=None, **overrides):
    """Build the app (optionally with an executor factory) and serve it on 127.0.0.1."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    values = dict(home=tmp_path, public_base_url=base_url, executor="inprocess",
                  allow_private_urls=True, port=port)
    values.update(overrides)
    settings = Settings(**values)
    services = build_services(settings)
    services.executor = executor(services) if executor is not None else None
    app = build_app(settings, services=services)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield Served(base_url, services)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        services.engine.dispose()


@asynccontextmanager
async def mcp_session(url: str, bearer: str):
    """An initialized MCP client session over Streamable HTTP with `Authorization: Bearer`."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {bearer}"})
    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


def tool_json(result) -> dict:
    """The JSON a tool answered (first content block), success or error."""
    return json.loads(result.content[0].text)


def tool_error(result) -> dict:
    assert result.is_error, result
    body = tool_json(result)
    assert body["object"] == "error" and set(body["error"]) == {"code", "message", "details"}
    return body["error"]
