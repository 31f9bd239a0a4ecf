"""AIXpose `/v1`: the seed's five examples with their exact bodies, lineage numbering, review →
agent preferences → auto-enhancement, catalog, ledger = balance, idempotency and errors. Jobs run
on the tiny engine through the in-process executor."""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from retouch.serving.core import keys
from retouch.serving.core.db import transaction
from retouch.serving.executor import InProcessExecutor

from api_fixtures import api_for, assert_error, image_bytes, make_settings, serve_routes

# The seed's partner URL with a loopback host: webhook URLs are vetted like image URLs (DNS +
# address rules), and loopback is allowed here (`allow_private_urls`).
WEBHOOK = "http://127.0.0.1:9/aixpose/webhook"


@pytest.fixture(scope="module")
def aix(tmp_path_factory, tiny_store):
    from retouch.serving.runner import TaskRunner

    settings = make_settings(tmp_path_factory.mktemp("aixpose"), allow_private_urls=True,
                             dispatcher_concurrency=1)
    executor = lambda s: InProcessExecutor(s, lambda: TaskRunner(tiny_store))  # noqa: E731
    with api_for(settings, executor=executor) \
            as api:
        yield api


def aix_key(api, credits: int = 5000) -> str:
    account_id = api.account(plan="pro", credits=credits)
    with transaction(api.services.session_factory) as session:
        return keys.create_key(session, account_id, surface="aixpose")[1]


def post(api, secret, path, body=None, key=None, **kwargs):
    headers = {"Authorization": f"Bearer {secret}"}
    if key:
        headers["Idempotency-Key"] = key
    return api.client.post(path, json=body, headers=headers, **kwargs)


def get(api, secret, path):
    response = api.client.get(path, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200, response.text
    return response.json()


def wait_done(api, secret, picture_id, timeout_s=120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        picture = get(api, secret, f"/v1/pictures/{picture_id}")
        if picture["status"] in ("completed", "failed"):
            return picture
        time.sleep(0.1)
    raise AssertionError(f"picture {picture_id} did not finish")


def fetch_image(api, url) -> Image.Image:
    response = api.client.get(url.removeprefix("http://testserver"))
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content))


def new_project(api, secret, **overrides) -> str:
    body = {"name": "p", "output": "picture", "picture_aspect_ratio": "original",
            "picture_resolution": "1K", **overrides}
    response = post(api, secret, "/v1/projects", body, key=f"prj-{time.monotonic_ns()}")
    assert response.status_code == 201, response.text
    return response.json()["id"]


def upload(api, secret, project_id, scene_type="interior", scene_location="living_room",
           color=(150, 120, 90)) -> dict:
    response = api.client.post(
        f"/v1/projects/{project_id}/pictures", headers={"Authorization": f"Bearer {secret}"},
        files={"file": ("room.jpg", image_bytes(96, 64, "JPEG", color), "image/jpeg")},
        data={"scene_type": scene_type, "scene_location": scene_location})
    assert response.status_code == 201, response.text
    return response.json()


def test_seed_examples_one_to_five(aix):
    secret = aix_key(aix)
    # Example 1: create a project.
    created = post(aix, secret, "/v1/projects", {
        "name": "Gdynia apartment campaign", "output": "picture",
        "picture_aspect_ratio": "16:9", "picture_resolution": "2K"}, key="example-1")
    assert created.status_code == 201, created.text
    project = created.json()
    assert project["id"].startswith("prj_") and project["picture_resolution"] == "2K"
    assert get(aix, secret, f"/v1/projects/{project['id']}") == project
    project_id = project["id"]

    # Example 2: a picture from a URL (a loopback server; private URLs are allowed here).
    jpeg = image_bytes(96, 64, "JPEG", (180, 170, 160))
    with serve_routes({"/listings/4812/living-room.jpg":
                       (200, {"Content-Type": "image/jpeg"}, jpeg)}) as base:
        from_url = post(aix, secret, f"/v1/projects/{project_id}/pictures", {
            "source": {"type": "url", "url": f"{base}/listings/4812/living-room.jpg"},
            "scene_type": "interior", "scene_location": "living_room",
            "webhook_url": WEBHOOK}, key="example-2")
    assert from_url.status_code == 201, from_url.text
    picture = from_url.json()
    assert picture["id"].startswith("pic_") and picture["project_id"] == project_id
    assert (picture["status"], picture["version"], picture["subversion"]) == ("completed", 0, 0)
    assert fetch_image(aix, picture["public_url"]).size == (96, 64)

    # Example 3: multipart form data.
    multipart = aix.client.post(
        f"/v1/projects/{project_id}/pictures",
        headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "example-3"},
        files={"file": ("living-room.jpg", jpeg, "image/jpeg")},
        data={"scene_type": "interior", "scene_location": "living_room", "webhook_url": WEBHOOK})
    assert multipart.status_code == 201, multipart.text
    assert multipart.json()["scene_location"] == "living_room"

    # Example 4: base64 JSON.
    from_base64 = post(aix, secret, f"/v1/projects/{project_id}/pictures", {
        "source": {"type": "base64", "media_type": "image/jpeg",
                   "data": base64.b64encode(jpeg).decode()},
        "scene_type": "interior", "scene_location": "living_room"}, key="example-4")
    assert from_base64.status_code == 201, from_base64.text
    assert len(get(aix, secret, f"/v1/projects/{project_id}/pictures")["data"]) == 3

    # Example 5: enhance with two preset actions, two variants.
    body = {"instruction": {"source": "preset",
                            "actions": ["interior-style-japandi", "interior-decoration-medium"]},
            "variants": 2, "aspect_ratio": "16:9", "resolution": "2K", "webhook_url": WEBHOOK}
    enhanced = post(aix, secret, f"/v1/pictures/{picture['id']}/enhancements", body,
                    key="listing-4812-kitchen-v1")
    assert enhanced.status_code == 201, enhanced.text
    pictures = enhanced.json()["data"]
    assert [(p["version"], p["subversion"]) for p in pictures] == [(1, 0), (1, 1)]
    assert all(p["parent_id"] == picture["id"] for p in pictures)
    assert pictures[0]["source_instruction"] == body["instruction"]
    replay = post(aix, secret, f"/v1/pictures/{picture['id']}/enhancements", body,
                  key="listing-4812-kitchen-v1")
    assert replay.status_code == 200
    assert [p["id"] for p in replay.json()["data"]] == [p["id"] for p in pictures]

    outputs = []
    for p in pictures:
        done = wait_done(aix, secret, p["id"])
        assert done["status"] == "completed", done
        image = fetch_image(aix, done["public_url"])
        assert image.format == "JPEG" and image.size == (2048, 1152)
        outputs.append(image.tobytes())
    assert outputs[0] != outputs[1]  # variants use different seeds

    # Credits: 2 variants x (40 + 40), charged once despite the replay; the ledger sums up.
    balance = get(aix, secret, "/v1/credits/balance")["balance"]
    assert balance == 5000 - 160
    ledger = get(aix, secret, "/v1/credits/ledger?limit=1")
    entries = ledger["data"]
    while ledger["has_more"]:
        ledger = get(aix, secret, f"/v1/credits/ledger?limit=1&cursor={ledger['next_cursor']}")
        entries += ledger["data"]
    assert sum(e["amount"] for e in entries) == balance
    reserve = next(e for e in entries if e["kind"] == "reserve")
    assert reserve["amount"] == -160 and reserve["picture_ids"] == [p["id"] for p in pictures]


def test_lineage_numbers_across_an_enhancement_chain(aix):
    secret = aix_key(aix)
    project_id = new_project(aix, secret)
    original = upload(aix, secret, project_id, scene_type="exterior", scene_location="facade",
                      color=(90, 140, 200))
    sky = {"instruction": {"source": "preset", "actions": ["exterior-sky-blue"]},
           "resolution": "1K"}
    first = post(aix, secret, f"/v1/pictures/{original['id']}/enhancements", sky).json()["data"]
    assert [(p["version"], p["subversion"]) for p in first] == [(1, 0)]
    done = wait_done(aix, secret, first[0]["id"])
    assert done["status"] == "completed", done
    assert fetch_image(aix, done["public_url"]).size == (1024, 682)

    again = post(aix, secret, f"/v1/pictures/{first[0]['id']}/enhancements",
                 {**sky, "instruction": {"source": "custom", "prompt": "warmer evening light"},
                  "variants": 2}).json()["data"]
    assert [(p["version"], p["subversion"]) for p in again] == [(1, 1), (1, 2)]
    second = post(aix, secret, f"/v1/pictures/{original['id']}/enhancements", sky).json()["data"]
    assert [(p["version"], p["subversion"]) for p in second] == [(2, 0)]

    chain = get(aix, secret, f"/v1/pictures/{again[1]['id']}/lineage")["data"]
    assert [step["id"] for step in chain] == [again[1]["id"], first[0]["id"], original["id"]]
    assert chain[0]["parent_id"] == first[0]["id"] and chain[2]["parent_id"] is None
    assert chain[0]["source_instruction"] == {"source": "custom",
                                              "prompt": "warmer evening light"}
    assert chain[0]["seed"] is not None and chain[0]["seed"] != chain[1]["seed"]
    assert chain[2]["seed"] is None and chain[2]["source_instruction"] is None
    assert chain[0]["model_revision"].startswith("tiny:")
    picture = get(aix, secret, f"/v1/pictures/{again[1]['id']}")  # the object says it too
    assert (picture["seed"], picture["model_revision"]) == (chain[0]["seed"],
                                                            chain[0]["model_revision"])
    assert done["seed"] == chain[1]["seed"] and original["seed"] is None
    for p in again + second:
        assert wait_done(aix, secret, p["id"])["status"] == "completed"


def test_review_teaches_the_agent_which_auto_enhances_new_uploads(aix):
    secret = aix_key(aix)
    project_id = new_project(aix, secret)
    original = upload(aix, secret, project_id)
    actions = ["interior-style-scandinavian", "light-bright-natural"]
    made = post(aix, secret, f"/v1/pictures/{original['id']}/enhancements",
                {"instruction": {"source": "preset", "actions": actions}}).json()["data"][0]
    early = post(aix, secret, f"/v1/pictures/{made['id']}/approve")
    if early.status_code == 400:  # still rendering: approval needs a completed picture
        assert_error(early, 400, "invalid_input", "picture_id")
    assert wait_done(aix, secret, made["id"])["status"] == "completed"
    approved = post(aix, secret, f"/v1/pictures/{made['id']}/approve", key="approve-1")
    assert approved.status_code == 200 and approved.json()["approved"] is True
    rated = post(aix, secret, f"/v1/pictures/{made['id']}/feedback",
                 {"rating": 5, "comment": "great light"})
    assert rated.json()["feedback"] == {"rating": 5, "comment": "great light"}
    agent = get(aix, secret, "/v1/agent")
    assert agent["enabled"] is False
    assert agent["preferences"]["learned"]["interior"] == {a: 4.0 for a in actions}
    assert agent["preferences"]["preferred_actions"]["interior"] == sorted(actions)

    patched = aix.client.patch("/v1/agent", json={"enabled": True},
                               headers={"Authorization": f"Bearer {secret}"})
    assert patched.status_code == 200 and patched.json()["enabled"] is True
    fresh = upload(aix, secret, project_id, color=(60, 90, 60))
    listed = get(aix, secret, f"/v1/projects/{project_id}/pictures")["data"]
    auto = [p for p in listed if p["parent_id"] == fresh["id"]]
    assert len(auto) == 1 and auto[0]["version"] == 1
    assert auto[0]["source_instruction"] == {"source": "preset", "actions": sorted(actions),
                                             "origin": "agent"}
    assert wait_done(aix, secret, auto[0]["id"])["status"] == "completed"

    published = post(aix, secret, f"/v1/projects/{project_id}/publish")
    assert published.status_code == 200, published.text
    media = published.json()["published_media"]
    assert published.json()["status"] == "published"
    assert [m["id"] for m in media] == [made["id"]] and media[0]["url"].startswith("http")


def test_catalog_quick_actions_idempotency_and_errors(aix):
    secret = aix_key(aix)
    groups = get(aix, secret, "/v1/catalog/actions")["data"]
    by_id = {a["id"]: a for g in groups for a in g["actions"]}
    assert by_id["interior-style-japandi"]["credits"] == 40
    assert by_id["exterior-twilight"]["scene_types"] == ["exterior"]
    models = get(aix, secret, "/v1/catalog/models")
    assert models["profile"] == "tiny" and {"base", "inpaint", "segmenter"} <= {
        m["id"] for m in models["data"]}
    ratios = {r["id"]: r for r in get(aix, secret, "/v1/catalog/aspect-ratios")["data"]}
    assert ratios["16:9"]["sizes"]["2K"] == [2048, 1152] and ratios["original"]["sizes"] is None

    schema = aix.client.get("/openapi.json").json()
    upload_body = schema["paths"]["/v1/projects/{project_id}/pictures"]["post"]["requestBody"]
    assert set(upload_body["content"]) == {"application/json", "multipart/form-data"}
    assert "$defs" not in str(upload_body)

    quick = post(aix, secret, "/v1/quick-actions",
                 {"name": "Warm", "instruction": {"actions": ["light-bright-natural"]}})
    assert quick.status_code == 201 and quick.json()["id"].startswith("qa_")
    names = [q["name"] for q in get(aix, secret, "/v1/quick-actions")["data"]]
    assert "Warm" in names and "Listing ready" in names

    body = {"name": "Same", "output": "picture"}
    first = post(aix, secret, "/v1/projects", body, key="idem-1")
    replay = post(aix, secret, "/v1/projects", body, key="idem-1")
    assert first.status_code == 201 and replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"]
    assert_error(post(aix, secret, "/v1/projects", {**body, "name": "Other"}, key="idem-1"),
                 409, "idempotency_conflict")

    project_id = first.json()["id"]
    extra = [new_project(aix, secret, name=f"p{i}") for i in range(2)]
    page = get(aix, secret, "/v1/projects?limit=2")
    assert [p["id"] for p in page["data"]] == extra[::-1] and page["has_more"]
    rest = get(aix, secret, f"/v1/projects?limit=2&cursor={page['next_cursor']}")
    assert [p["id"] for p in rest["data"]] == [project_id] and not rest["has_more"]

    picture = upload(aix, secret, project_id)
    bad = post(aix, secret, f"/v1/pictures/{picture['id']}/enhancements",
               {"instruction": {"source": "preset",
                                "actions": ["interior-style-japandi", "interior-style-nope"]}})
    assert_error(bad, 400, "invalid_input", "instruction.actions[1]")
    misfit = post(aix, secret, f"/v1/pictures/{picture['id']}/enhancements",
                  {"instruction": {"source": "preset", "actions": ["exterior-twilight"]}})
    assert_error(misfit, 400, "invalid_input", "instruction.actions[0]")
    assert_error(post(aix, secret, f"/v1/projects/{project_id}/pictures",
                      {"source": {"type": "base64", "media_type": "image/png", "data": "@@"},
                       "scene_type": "interior"}), 400, "invalid_input", "source.data")
    assert_error(post(aix, secret, f"/v1/pictures/{picture['id']}/enhancements",
                      {"instruction": {"source": "custom", "prompt": "x"},
                       "webhook_url": "ftp://partner.example/hook"}),
                 400, "invalid_input", "webhook_url")
    assert_error(post(aix, secret, "/v1/projects", {"name": "x", "picture_resolution": "8K"}),
                 400, "invalid_input", "picture_resolution")
    assert_error(aix.client.get("/v1/projects/prj_missing",
                                headers={"Authorization": f"Bearer {secret}"}),
                 404, "invalid_input", "project_id")
    _, wixma_secret = aix.key()
    assert_error(post(aix, wixma_secret, "/v1/projects", body), 401, "unauthorized")
    assert get(aix, secret, "/v1/credits/balance")["balance"] == 5000  # nothing was charged
