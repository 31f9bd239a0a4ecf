"""The seed's AIXpose examples 1–5, unchanged in shape, against a real `retouch serve` (uvicorn in
a subprocess, in-process executor on the tiny models) with a key made by the operator CLI."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from PIL import Image

from api_fixtures import image_bytes, serve_routes
from serve_process import cli_json, retouch_serve

pytestmark = pytest.mark.timeout(240)

WEBHOOK = "http://127.0.0.1:9/aixpose/webhook"  # loopback: allowed with --allow-private-urls


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_cache_dir):
    from retouch.models.tiny import build_tiny_models

    build_tiny_models(tiny_cache_dir)
    home = tmp_path_factory.mktemp("aixpose-serve")
    env = {"RETOUCH_MODEL_CACHE": str(tiny_cache_dir), "RETOUCH_DISPATCHER_CONCURRENCY": "1"}
    with retouch_serve(home, "--executor", "inprocess", "--profile", "tiny", "--device", "cpu",
                       "--allow-private-urls", env=env) as serve, \
            httpx.Client(base_url=serve.base_url, timeout=30) as http:
        account = cli_json(home, "accounts", "create", "--name", "agency", "--plan", "plus",
                           "--credits", "10000")
        secret = cli_json(home, "keys", "create", "--account", account["id"], "--surface",
                          "aixpose")["secret"]
        assert secret.startswith("aix_live_")
        yield http, secret


def test_seed_examples_against_retouch_serve(server):
    http, secret = server

    def headers(idempotency_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}", "Idempotency-Key": idempotency_key}

    project = http.post("/v1/projects", headers=headers("e2e-1"), json={
        "name": "Gdynia apartment campaign", "output": "picture",
        "picture_aspect_ratio": "16:9", "picture_resolution": "2K"}).json()
    project_id = project["id"]
    jpeg = image_bytes(96, 64, "JPEG", (170, 150, 120))
    with serve_routes({"/living-room.jpg": (200, {"Content-Type": "image/jpeg"}, jpeg)}) as base:
        picture = http.post(f"/v1/projects/{project_id}/pictures", headers=headers("e2e-2"),
                            json={"source": {"type": "url", "url": f"{base}/living-room.jpg"},
                                  "scene_type": "interior", "scene_location": "living_room",
                                  "webhook_url": WEBHOOK}).json()
    assert picture["id"].startswith("pic_"), picture
    form = http.post(f"/v1/projects/{project_id}/pictures", headers=headers("e2e-3"),
                     files={"file": ("living-room.jpg", jpeg, "image/jpeg")},
                     data={"scene_type": "interior", "scene_location": "living_room",
                           "webhook_url": WEBHOOK})
    assert form.status_code == 201 and form.json()["id"].startswith("pic_"), form.text
    inline = http.post(f"/v1/projects/{project_id}/pictures", headers=headers("e2e-4"), json={
        "source": {"type": "base64", "media_type": "image/jpeg",
                   "data": base64.b64encode(jpeg).decode()},
        "scene_type": "interior", "scene_location": "living_room"})
    assert inline.status_code == 201 and inline.json()["id"].startswith("pic_"), inline.text

    enhanced = http.post(f"/v1/pictures/{picture['id']}/enhancements",
                         headers=headers("listing-4812-kitchen-v1"), json={
                             "instruction": {"source": "preset",
                                             "actions": ["interior-style-japandi",
                                                         "interior-decoration-medium"]},
                             "variants": 2, "aspect_ratio": "16:9", "resolution": "2K",
                             "webhook_url": WEBHOOK})
    assert enhanced.status_code == 201, enhanced.text
    variants = enhanced.json()["data"]
    assert [(v["version"], v["subversion"]) for v in variants] == [(1, 0), (1, 1)]
    for variant in variants:
        deadline = time.monotonic() + 120
        while (state := http.get(f"/v1/pictures/{variant['id']}",
                                 headers={"Authorization": f"Bearer {secret}"}).json()
               )["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, state
            time.sleep(0.25)
        assert state["status"] == "completed", state
        image = Image.open(io.BytesIO(httpx.get(state["public_url"]).content))
        assert image.size == (2048, 1152) and image.format == "JPEG"
    balance = http.get("/v1/credits/balance", headers={"Authorization": f"Bearer {secret}"})
    assert balance.json()["balance"] == 10000 - 160
