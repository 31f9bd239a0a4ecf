"""Helpers for the HTTP API tests: an app on a temp SQLite DB + local storage, accounts and keys,
real image bytes, and a tiny loopback HTTP server for URL references."""

from __future__ import annotations

import io
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retouch.serving.app import build_app
from retouch.serving.core import accounts, keys
from retouch.serving.core.db import transaction
from retouch.serving.services import Services, build_services
from retouch.serving.settings import Settings

from db_fixtures import postgres_schema

ERROR_KEYS = {"object", "error", "request_id"}


def make_settings(tmp_path, **overrides) -> Settings:
    # drain_seconds=0: a test app that shuts down with a job running requeues it at once.
    values = dict(home=tmp_path, public_base_url="http://testserver", executor="inprocess",
                  drain_seconds=0)
    values.update(overrides)
    return Settings(**values)


def image_bytes(width: int = 32, height: int = 24, fmt: str = "PNG",
                color=(200, 30, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass
class Api:
    client: TestClient
    services: Services

    def account(self, plan: str = "plus", credits: int = 100_000) -> str:
        with transaction(self.services.session_factory) as session:
            return accounts.create_account(session, "test", plan=plan, credits=credits).id

    def key(self, account_id: str | None = None, **options) -> tuple[str, str]:
        """(key_id, secret) for a new Wixma key (on a new plus account unless given)."""
        account_id = account_id or self.account()
        with transaction(self.services.session_factory) as session:
            key, secret = keys.create_key(session, account_id, **options)
            return key.id, secret

    def headers(self, secret: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}", **extra}

    def upload(self, secret: str, data: bytes | None = None, name: str = "a.png") -> dict:
        response = self.client.post("/api/v1/uploads", headers=self.headers(secret),
                                    files={"file": (name, data or image_bytes(), "image/png")})
        assert response.status_code == 201, response.text
        return response.json()["upload"]

    def generate(self, secret: str, body: dict, **headers: str):
        return self.client.post("/api/v1/generations", json=body,
                                headers=self.headers(secret, **headers))


GENERATOR_BODY = {"tool": "generator", "input": {"prompt": "a red sneaker"},
                  "options": {"quality": "low"}}


def assert_error(response, status: int, code: str, field: str | None = None) -> dict:
    """The seed's exact error shape, with a request id echoed in `X-Request-Id`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["object"] == "error"
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["request_id"].startswith("req_")
    assert response.headers["X-Request-Id"] == body["request_id"]
    if field is not None:
        assert body["error"]["message"].startswith(field), body["error"]["message"]
        assert body["error"]["details"]["field"] == field
    return body["error"]


def leaf_routes(routes):
    """Every route of an app, included routers expanded (their routes under the prefix)."""
    for route in routes:
        inner = getattr(route, "effective_candidates", None)
        if inner is not None:  # a router included into the app
            yield from leaf_routes([getattr(c, "route", c) for c in inner()])
        else:
            yield route


def app_routes(routes):
    """(method, path) of every route, included routers expanded; HEAD and OPTIONS left out."""
    for route in leaf_routes(routes):
        for method in sorted(getattr(route, "methods", None) or {"*"}):
            if method not in ("HEAD", "OPTIONS"):
                yield method, getattr(route, "path", "")


@contextmanager
def api_for(settings: Settings, *, executor=None):
    services = build_services(settings)
    services.executor = executor(services) if callable(executor) else executor
    app = build_app(settings, services=services)
    with TestClient(app) as client:
        yield Api(client, services)
    services.engine.dispose()


@pytest.fixture
def api(tmp_path):
    with api_for(make_settings(tmp_path)) as instance:
        yield instance


# ---- a tiny loopback HTTP server --------------------------------------------------------------
@contextmanager
def serve_routes(routes: dict[str, tuple[int, dict[str, str], bytes]]):
    """Serve `path -> (status, headers, body)` on 127.0.0.1; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            status, headers, body = routes.get(self.path, (404, {}, b"missing"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def finish_next_job(api: Api, outputs: list[bytes] | None = None) -> str:
    """Lease the oldest pending job and complete it with stored outputs (as a worker would)."""
    from retouch.serving.core import jobs

    job = jobs.lease_next_job(api.services.session_factory, "test-worker", 30)
    assert job is not None
    output_keys = []
    for n, data in enumerate(outputs or [image_bytes(16, 16)], start=1):
        key = f"outputs/{job.id}/{n}.png"
        api.services.storage.put(key, data, "image/png")
        output_keys.append(key)
    assert jobs.complete_job(api.services.session_factory, job.id, "test-worker", output_keys)
    return job.id


def settle(api: Api, secret: str, body: dict, timeout: float = 90) -> dict:
    """Create a generation and poll it until it is `completed` or `failed`."""
    created = api.generate(secret, body)
    assert created.status_code == 201, created.text
    job_id = created.json()["generation"]["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.client.get(f"/api/v1/generations/{job_id}",
                             headers=api.headers(secret)).json()["generation"]
        if job["status"] in ("completed", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not settle")


def services_on(backend: str, tmp_path, schema_prefix: str, **settings):
    """Services on SQLite, or on a fresh PostgreSQL schema (a generator for a fixture)."""
    if backend == "sqlite":
        services = build_services(make_settings(tmp_path, **settings))
        yield services
        services.engine.dispose()
        return
    with postgres_schema(schema_prefix) as url:
        services = build_services(make_settings(tmp_path, database_url=url, **settings))
        try:
            yield services
        finally:
            services.engine.dispose()
