"""Schemathesis over the app's own `/openapi.json`: every operation of both surfaces (Wixma
`/api/v1`, AIXpose `/v1`, plus `/healthz` and `/files/{key}`), on SQLite and PostgreSQL, with
valid keys of every scope. Each operation gets schema-valid requests (with random ids, and with
ids of real resources of the account) and schema-violating ones.

What must hold for every answer: no 5xx; a documented status code, content type, headers and
body (schemathesis' conformance checks); a schema-violating request refused with a 4xx; and every
4xx in the seed's error shape with a `request_id` that `X-Request-Id` echoes.

Bounded: no executor (jobs stay pending), no DNS (URL references fail at once), a few examples
per operation (`RETOUCH_FUZZ_EXAMPLES`, default 6), hypothesis without shrinking or a database.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks as openapi_checks

from retouch.serving.core import keys
from retouch.serving.core.db import transaction
from retouch.serving.core.errors import ERROR_STATUS

from api_fixtures import ERROR_KEYS, GENERATOR_BODY, api_for, image_bytes, make_settings
from db_fixtures import BACKENDS, postgres_schema

EXAMPLES = int(os.environ.get("RETOUCH_FUZZ_EXAMPLES", "6"))
BASE_URL = "http://testserver"
SCHEMES = {"WixmaApiKey": "wixma", "AIXposeApiKey": "aixpose"}


def error_shape(ctx, response, case) -> None:
    """Every 4xx (and any 5xx) is the seed's error object with a request id it echoes."""
    request_id = response.headers.get("x-request-id", [None])[0]
    assert request_id and request_id.startswith("req_"), "no X-Request-Id header"
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, f"not the error shape: {body}"
    assert body["object"] == "error", body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, body
    assert error["code"] in ERROR_STATUS, f"unknown error code {error['code']!r}"
    assert isinstance(error["message"], str) and error["message"], body
    assert body["request_id"] == request_id, "request_id differs from X-Request-Id"


CHECKS = [not_a_server_error, openapi_checks.status_code_conformance,
          openapi_checks.content_type_conformance, openapi_checks.response_headers_conformance,
          openapi_checks.response_schema_conformance, openapi_checks.negative_data_rejection,
          error_shape]


@dataclass
class Tally:
    requests: int = 0
    operations: set = field(default_factory=set)
    statuses: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)  # (check title, operation) -> failures


def no_dns(host, port):
    raise socket.gaierror(socket.EAI_NONAME, "no DNS in this test")


@pytest.fixture(scope="module", params=BACKENDS)
def api(request, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    if request.param == "sqlite":
        with api_for(make_settings(home)) as instance:
            yield instance
        return
    with postgres_schema("test_fuzz") as url, api_for(make_settings(home, database_url=url)) \
            as instance:
        yield instance


@pytest.fixture(scope="module")
def secrets(api):
    api.services.fetcher.resolver = no_dns
    account_id = api.account(plan="pro", credits=10**9)
    with transaction(api.services.session_factory) as session:
        wixma = keys.create_key(session, account_id, rate_limit_per_minute=10**6)[1]
        aixpose = keys.create_key(session, account_id, surface="aixpose",
                                  rate_limit_per_minute=10**6)[1]
    return {"wixma": wixma, "aixpose": aixpose}


@pytest.fixture(scope="module")
def resource_ids(api, secrets):
    """Real resources of the account, so valid requests reach past the lookups."""
    wixma = {"Authorization": f"Bearer {secrets['wixma']}"}
    aixpose = {"Authorization": f"Bearer {secrets['aixpose']}"}
    upload = api.upload(secrets["wixma"])
    generation = api.client.post("/api/v1/generations", json=GENERATOR_BODY, headers=wixma)
    project = api.client.post("/v1/projects", json={"name": "fuzz"}, headers=aixpose)
    source = {"type": "base64", "media_type": "image/png",
              "data": base64.b64encode(image_bytes()).decode()}
    picture = api.client.post(f"/v1/projects/{project.json()['id']}/pictures", headers=aixpose,
                              json={"source": source, "scene_type": "interior"})
    approved = api.client.post(f"/v1/pictures/{picture.json()['id']}/approve", headers=aixpose)
    video = api.client.post("/v1/videos", headers=aixpose,
                            json={"project_id": project.json()["id"], "duration": 5})
    for response in (generation, project, picture, approved, video):
        assert response.status_code in (200, 201), response.text
    return {"generation_id": generation.json()["generation"]["id"],
            "project_id": project.json()["id"], "picture_id": picture.json()["id"],
            "video_id": video.json()["id"],
            "key": upload["url"].removeprefix(f"{BASE_URL}/files/")}


def plain_form_values(kwargs: dict) -> dict:
    """Multipart parts as the HTTP client can send them (generated parts may be numbers)."""
    def encode(value):
        if isinstance(value, tuple):
            return (value[0], encode(value[1]), *value[2:])
        return value if isinstance(value, (bytes, str)) else str(value).encode()

    files = kwargs.get("files")
    if isinstance(files, dict):
        kwargs["files"] = {name: encode(value) for name, value in files.items()}
    elif isinstance(files, list):
        kwargs["files"] = [(name, encode(value)) for name, value in files]
    if isinstance(kwargs.get("data"), dict):
        kwargs["data"] = {k: v if isinstance(v, (str, bytes)) else str(v)
                          for k, v in kwargs["data"].items()}
    return kwargs


def strategies(operation, auth: dict, ids: dict):
    """(label, strategy): valid data with random ids, with the account's real ids, invalid."""
    yield "positive", operation.as_strategy(GenerationMode.POSITIVE, headers=auth or None)
    names = [p.name for p in operation.path_parameters]
    # Not the event streams of real jobs: a pending job's stream stays open (test_job_events).
    if names and all(name in ids for name in names) and not operation.path.endswith("/events"):
        yield "positive-real-ids", operation.as_strategy(
            GenerationMode.POSITIVE, headers=auth or None,
            path_parameters={name: ids[name] for name in names})
    yield "negative", operation.as_strategy(GenerationMode.NEGATIVE, headers=auth or None)


def fuzz_operation(api, operation, auth: dict, ids: dict, tally: Tally) -> None:
    sent = tally.requests
    for label, strategy in strategies(operation, auth, ids):
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(strategy)
        def run(case):
            kwargs = plain_form_values(case.as_transport_kwargs(base_url=BASE_URL))
            kwargs.pop("base_url", None)
            if not kwargs.get("cookies"):
                kwargs.pop("cookies", None)
            response = api.client.request(**kwargs)
            tally.requests += 1
            tally.statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=kwargs.get("headers"))
            except BaseExceptionGroup as group:
                for failure in group.exceptions:
                    tally.kinds[failure.title, operation.label] += 1
                    tally.failures.append(
                        f"{operation.label} [{label}] {failure.title} → {response.status_code} "
                        f"{response.text[:300]}\n    request: {kwargs['method']} "
                        f"{kwargs['url']} params={kwargs.get('params')} "
                        f"body={kwargs.get('json', kwargs.get('data'))!r:.300}")

        try:
            run()
        except Unsatisfiable:  # nothing to violate (e.g. no parameters, or only free strings)
            continue
    if tally.requests > sent:
        tally.operations.add(operation.label)


def test_every_operation_answers_as_documented(api, secrets, resource_ids):
    schema = schemathesis.openapi.from_dict(api.client.get("/openapi.json").json())
    tally = Tally()
    started = time.monotonic()
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        security = operation.definition.raw.get("security") or [{}]
        surface = next((SCHEMES[name] for name in security[0] if name in SCHEMES), None)
        auth = {"Authorization": f"Bearer {secrets[surface]}"} if surface else {}
        fuzz_operation(api, operation, auth, resource_ids, tally)
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {len(labels)} operations, {tally.requests} requests in {elapsed:.0f} s, "
          f"statuses {dict(sorted(tally.statuses.items()))}, {len(tally.failures)} failures "
          f"({len(tally.kinds)} distinct: {dict(Counter(title for title, _ in tally.kinds))})")
    # Both surfaces are in the schema and were reached.
    assert any(" /api/v1/" in label for label in labels)
    assert any(" /v1/" in label for label in labels)
    assert set(labels) == tally.operations
    assert not any(status >= 500 for status in tally.statuses)
    assert not tally.failures, "\n".join(tally.failures[:40])
