"""The seed's AIXpose examples 1–5, unchanged in shape, against a real `retouch serve` (uvicorn in
a subprocess, in-process executor on the tiny models) with a key made by the operator CLI."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from api_fixtures import image_bytes, serve_routes

pytestmark = pytest.mark.timeout(240)

RETOUCH = str(Path(sys.executable).parent / "retouch")
WEBHOOK = "http://127.0.0.1:9/aixpose/webhook"  # loopback: allowed with --allow-private-urls


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_json(home: Path, *args: str) -> dict:
    done = subprocess.run([RETOUCH, *args, "--home", str(home), "--json"], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_cache_dir):
    from retouch.models.tiny import build_tiny_models

    build_tiny_models(tiny_cache_dir)
    home = tmp_path_factory.mktemp("aixpose-serve")
    port = free_port()
    env = {**os.environ, "RETOUCH_MODEL_CACHE": str(tiny_cache_dir),
           "RETOUCH_DISPATCHER_CONCURRENCY": "1"}
    log = home / "serve.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [RETOUCH, "serve", "--home", str(home), "--port", str(port), "--executor",
             "inprocess", "--profile", "tiny", "--device", "cpu", "--allow-private-urls"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"retouch serve exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-3000:]}"
            try:
                if http.get("/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        account = cli_json(home, "accounts", "create", "--name", "agency", "--plan", "plus",
                           "--credits", "10000")
        secret = cli_json(home, "keys", "create", "--account", account["id"], "--surface",
                          "aixpose")["secret"]
        assert secret.startswith("aix_live_")
        yield http, secret
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        http.close()


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
