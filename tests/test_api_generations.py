"""Generations through HTTP: creation shape, image references, polling, listing, OpenAPI."""

from __future__ import annotations

import re

from api_fixtures import GENERATOR_BODY, assert_error, finish_next_job, image_bytes

SEED_KEYS = {"id", "object", "status", "tool", "output_url", "input_image", "cost_credits",
             "error_code", "error", "created_at"}


def test_create_returns_the_seed_generation_shape(api):
    _, secret = api.key()
    response = api.generate(secret, GENERATOR_BODY)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["object"] == "response" and body["request_id"].startswith("req_")
    assert response.headers["X-Request-Id"] == body["request_id"]
    generation = body["generation"]
    assert SEED_KEYS <= set(generation)
    assert generation["object"] == "generation" and generation["status"] == "pending"
    assert generation["tool"] == "generator" and generation["cost_credits"] == 40
    assert generation["output_url"] is None and generation["input_image"] is None
    assert generation["error_code"] is None and generation["error"] is None
    assert generation["progress"] == 0.0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", generation["created_at"])
    polled = api.client.get(f"/api/v1/generations/{generation['id']}",
                            headers=api.headers(secret))
    assert polled.status_code == 200
    assert polled.json()["generation"] == generation


def test_editor_with_an_upload_of_the_same_key(api):
    _, secret = api.key()
    upload = api.upload(secret)
    body = {"tool": "editor", "input": {"images": [{"upload_id": upload["id"]}],
                                         "prompt": "luxury studio"}}
    response = api.generate(secret, body)
    assert response.status_code == 201, response.text
    assert response.json()["generation"]["input_image"] == upload["url"]


def test_an_upload_of_another_key_is_rejected_before_the_job_exists(api):
    account = api.account()
    _, owner = api.key(account)
    _, other = api.key(account)  # same account, different key: the seed scopes uploads per key
    upload = api.upload(owner)
    body = {"tool": "editor", "input": {"images": [{"upload_id": upload["id"]}]}}
    assert_error(api.generate(other, body), 400, "invalid_input", field="input.images[0]")
    credits = api.client.get("/api/v1/credits", headers=api.headers(other)).json()["credits"]
    assert credits["queue"]["active"] == 0 and credits["balance"] == 100_000
    body["input"]["images"] = [{"upload_id": upload["id"]}, {"upload_id": "missing"}]
    assert_error(api.generate(owner, body), 400, "invalid_input", field="input.images[1]")


def test_generation_references_need_a_completed_job_of_the_same_account(api):
    _, secret = api.key()
    first = api.generate(secret, GENERATOR_BODY).json()["generation"]
    photo = {"tool": "photographer", "input": {"main_image": {"generation_id": first["id"]},
                                               "angle": "eye level, left side"},
             "options": {"mode": "angle_change", "quality": "low"}}
    # Still pending: not reusable yet.
    assert_error(api.generate(secret, photo), 400, "invalid_input", field="input.main_image")
    output = image_bytes(24, 24, color=(1, 2, 3))
    assert finish_next_job(api, [output]) == first["id"]
    done = api.client.get(f"/api/v1/generations/{first['id']}",
                          headers=api.headers(secret)).json()["generation"]
    assert done["status"] == "completed" and done["progress"] == 1.0
    assert api.client.get(done["output_url"].removeprefix("http://testserver")).content == output

    response = api.generate(secret, photo)
    assert response.status_code == 201, response.text
    generation = response.json()["generation"]
    assert generation["mode"] == "angle_change"
    assert generation["input_image"] == done["output_url"]
    # Another account cannot use it.
    _, stranger = api.key()
    assert_error(api.generate(stranger, photo), 400, "invalid_input", field="input.main_image")


def test_unknown_or_foreign_generation_id_is_a_404(api):
    _, secret = api.key()
    mine = api.generate(secret, GENERATOR_BODY).json()["generation"]
    assert_error(api.client.get("/api/v1/generations/nope", headers=api.headers(secret)),
                 404, "invalid_input")
    _, stranger = api.key()
    assert_error(api.client.get(f"/api/v1/generations/{mine['id']}",
                                headers=api.headers(stranger)), 404, "invalid_input")


def test_carousel_and_ai_filter_through_the_same_endpoint(api):
    _, secret = api.key()
    upload = api.upload(secret)
    carousel = {"tool": "photographer", "input": {"main_image": {"upload_id": upload["id"]}},
                "options": {"mode": "carousel", "quality": "medium", "aspect_ratio": "4:5"}}
    generation = api.generate(secret, carousel).json()["generation"]
    assert generation["cost_credits"] == 10 * 110 + 10
    assert generation["mode"] == "carousel" and generation["output_urls"] == []
    outputs = [image_bytes(16, 16, color=(i, i, i)) for i in range(10)]
    finish_next_job(api, outputs)
    done = api.client.get(f"/api/v1/generations/{generation['id']}",
                          headers=api.headers(secret)).json()["generation"]
    assert len(done["output_urls"]) == 10 and done["output_url"] == done["output_urls"][0]
    assert api.client.get(done["output_urls"][9].removeprefix("http://testserver")).content \
        == outputs[9]

    ai_filter = {"tool": "ai_filter", "input": {"image": {"upload_id": upload["id"]},
                                                "filter": "noir-bw"},
                 "options": {"quality": "low"}}
    response = api.generate(secret, ai_filter)
    assert response.status_code == 201, response.text
    assert response.json()["generation"]["tool"] == "ai_filter"
    ai_filter["input"]["filter"] = "sepia-dream"
    assert_error(api.generate(secret, ai_filter), 400, "invalid_input", field="input.filter")


def test_list_filters_and_cursor_pagination(api):
    account = api.account(plan="pro")
    _, secret = api.key(account)
    upload = api.upload(secret)
    created = [api.generate(secret, GENERATOR_BODY).json()["generation"]["id"] for _ in range(4)]
    upscale = api.generate(secret, {"tool": "upscaler", "input": {"image": {"upload_id":
                                                                            upload["id"]}}})
    created.append(upscale.json()["generation"]["id"])
    finish_next_job(api)  # the oldest generator job completes
    headers = api.headers(secret)

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/api/v1/generations", params=params, headers=headers).json()
        assert page["object"] == "list" and page["request_id"].startswith("req_")
        assert len(page["data"]) <= 2
        seen += [g["id"] for g in page["data"]]
        pages += 1
        assert page["has_more"] == (page["next_cursor"] is not None)
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert pages == 3 and seen == list(reversed(created))  # newest first, each exactly once

    only_upscaler = api.client.get("/api/v1/generations?tool=upscaler", headers=headers).json()
    assert [g["id"] for g in only_upscaler["data"]] == [created[-1]]
    completed = api.client.get("/api/v1/generations?status=completed", headers=headers).json()
    assert [g["id"] for g in completed["data"]] == [created[0]]
    pending = api.client.get("/api/v1/generations?status=pending&tool=generator",
                             headers=headers).json()
    assert {g["id"] for g in pending["data"]} == set(created[1:4])

    # Other accounts' jobs never show up.
    _, stranger = api.key()
    assert api.client.get("/api/v1/generations", headers=api.headers(stranger)).json()[
        "data"] == []
    assert_error(api.client.get("/api/v1/generations?cursor=garbage", headers=headers),
                 400, "invalid_input", field="cursor")
    assert_error(api.client.get("/api/v1/generations?status=done", headers=headers),
                 400, "invalid_input", field="status")
    assert_error(api.client.get("/api/v1/generations?limit=0", headers=headers),
                 400, "invalid_input", field="limit")


def test_credits_report_balance_queue_and_key_budget(api):
    _, secret = api.key(api.account(plan="standard", credits=1000), monthly_budget=500,
                        per_request_limit=200)
    api.generate(secret, GENERATOR_BODY)
    response = api.client.get("/api/v1/credits", headers=api.headers(secret))
    assert response.status_code == 200
    credits = response.json()["credits"]
    assert credits["balance"] == 960
    assert credits["queue"] == {"active": 1, "limit": 2, "plan": "standard"}
    assert credits["key"]["monthly"]["used"] == 40 and credits["key"]["monthly"]["limit"] == 500
    assert credits["key"]["total"] == {"used": 40, "limit": None}
    assert credits["key"]["per_request_limit"] == 200


def test_openapi_lists_every_path_with_real_shapes(api):
    spec = api.client.get("/openapi.json").json()
    assert {"/api/v1/uploads", "/api/v1/generations", "/api/v1/generations/{generation_id}",
            "/api/v1/credits", "/healthz", "/files/{key}"} <= set(spec["paths"])
    create = spec["paths"]["/api/v1/generations"]["post"]
    body_schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["$ref"] == "#/components/schemas/GenerationRequest"
    schemas = spec["components"]["schemas"]
    union = schemas["GenerationRequest"]
    tools = {ref["$ref"].rsplit("/", 1)[1] for ref in union["oneOf"]}
    assert tools == {"GeneratorRequest", "EditorRequest", "PhotographerRequest",
                     "UpscalerRequest", "FilterRequest"}
    assert {"201", "200", "400", "409", "429", "503"} <= set(create["responses"])
    assert "422" not in create["responses"]
    assert create["responses"]["409"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/ErrorResponse")
    assert "upload_id" in str(schemas["ImageRef"])
    assert spec["components"]["securitySchemes"]["WixmaApiKey"]["scheme"] == "bearer"
    assert create["security"] == [{"WixmaApiKey": []}]
