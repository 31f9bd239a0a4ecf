"""A NUL character anywhere a client controls (body JSON strings and keys, form fields, path and
query parameters, header and cookie values) is `400 invalid_input` naming the field, on SQLite
and on PostgreSQL (where it would otherwise reach the driver and fail), and nothing is created."""

from __future__ import annotations

import pytest

from retouch.serving.core import keys
from retouch.serving.core.db import transaction

from api_fixtures import GENERATOR_BODY, api_for, assert_error, image_bytes, make_settings
from db_fixtures import BACKENDS, postgres_schema


@pytest.fixture(scope="module", params=BACKENDS)
def api(request, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"nul-{request.param}")
    if request.param == "sqlite":
        with api_for(make_settings(home)) as instance:
            yield instance
        return
    with postgres_schema("test_nul") as url, api_for(make_settings(home, database_url=url)) \
            as instance:
        yield instance


@pytest.fixture(scope="module")
def secrets(api):
    _, wixma = api.key()
    account_id = api.account(plan="pro")
    with transaction(api.services.session_factory) as session:
        aixpose = keys.create_key(session, account_id, surface="aixpose")[1]
    return {"wixma": wixma, "aixpose": aixpose}


def send(api, secrets, surface, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {secrets[surface]}", **kwargs.pop("headers", {})}
    return api.client.request(method, path, headers=headers, **kwargs)


CASES = [  # (id, surface, method, path, request kwargs, field)
    ("upload-id", "wixma", "POST", "/api/v1/generations",
     {"json": {"tool": "upscaler", "input": {"image": {"upload_id": "ab\u0000cd"}}}},
     "input.image.upload_id"),
    ("generation-id", "wixma", "POST", "/api/v1/generations",
     {"json": {"tool": "editor", "input": {"images": [{"generation_id": "g\u0000"}]}}},
     "input.images[0].generation_id"),
    ("prompt", "wixma", "POST", "/api/v1/generations",
     {"json": {**GENERATOR_BODY, "input": {"prompt": "a red\u0000 sneaker"}}}, "input.prompt"),
    ("json-key", "wixma", "POST", "/api/v1/generations",
     {"json": {"tool": "generator", "input": {"prompt": "x", "a\u0000b": 1}}}, "input"),
    ("path-id", "wixma", "GET", "/api/v1/generations/ab%00cd", {}, "generation_id"),
    ("cursor", "wixma", "GET", "/api/v1/generations?cursor=ab%00cd", {}, "cursor"),
    ("query-name", "wixma", "GET", "/api/v1/generations?st%00atus=x", {}, "st\\x00atus"),
    ("idempotency-header", "wixma", "POST", "/api/v1/generations",
     {"json": GENERATOR_BODY, "headers": {"Idempotency-Key": "k\u0000"}}, "idempotency-key"),
    ("authorization-header", "wixma", "GET", "/api/v1/credits",
     {"headers": {"Authorization": "Bearer wx_live_\u0000abc"}}, "authorization"),
    ("file-key", "wixma", "GET", "/files/uploads/a%00b.png", {}, "key"),
    ("videos-project", "aixpose", "GET", "/v1/videos?project_id=prj_1%00", {}, "project_id"),
    ("project-name", "aixpose", "POST", "/v1/projects", {"json": {"name": "home\u0000"}},
     "name"),
    ("project-path", "aixpose", "GET", "/v1/projects/prj%00x", {}, "project_id"),
    ("multipart-field", "aixpose", "POST", "/v1/projects/prj_1/pictures",
     {"data": {"scene_type": "interior", "webhook_url": "https://a.example/\u0000"},
      "files": {"file": ("a.png", image_bytes(), "image/png")}}, "webhook_url"),
    ("form-field", "wixma", "POST", "/dashboard/login",
     {"data": {"email": "a\u0000@example.com", "password": "x"}}, "email"),
    ("cookie", "wixma", "GET", "/dashboard/keys",
     {"headers": {"Cookie": 'retouch_session="\\000abc"'}}, "retouch_session"),
]


@pytest.mark.parametrize("surface,method,path,kwargs,field",
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_nul_is_invalid_input_naming_the_field(api, secrets, surface, method, path, kwargs,
                                                 field):
    response = send(api, secrets, surface, method, path, **kwargs)
    error = assert_error(response, 400, "invalid_input")
    assert error["details"]["field"] == field, error
    assert error["message"].startswith(f"{field}: "), error


def test_nothing_was_created_or_charged(api, secrets):
    for case in CASES:
        send(api, secrets, *case[1:4], **case[4])
    listed = send(api, secrets, "wixma", "GET", "/api/v1/generations").json()
    assert listed["data"] == []
    credits = send(api, secrets, "wixma", "GET", "/api/v1/credits").json()["credits"]
    assert credits["balance"] == 100_000 and credits["queue"]["active"] == 0
    assert send(api, secrets, "aixpose", "GET", "/v1/projects").json()["data"] == []
