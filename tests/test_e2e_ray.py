"""End to end through a real `retouch serve` (Ray Serve executor) in a subprocess.

One server per module: the README quickstart flow (operator CLI → upload → editor job with an
Idempotency-Key → replay → poll → download), then a job whose Ray replica is killed mid-run,
which must end retried or failed with a refund, never stuck in `processing`.
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from serve_process import ServeProcess, cli_json, retouch_serve

pytestmark = pytest.mark.timeout(240)

LEASE_SECONDS = 3


class Server:
    def __init__(self, home: Path, serve: ServeProcess, http: httpx.Client, secret: str):
        self.home, self.process, self.log = home, serve.process, serve.log
        self.base, self.ready_seconds = serve.base_url, serve.ready_seconds
        self.http, self.secret = http, secret

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}", **extra}

    def wait_terminal(self, job_id: str, timeout: float = 90.0, every: float = 0.5) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            generation = self.http.get(f"/api/v1/generations/{job_id}",
                                       headers=self.headers()).json()["generation"]
            if generation["status"] in ("completed", "failed"):
                return generation
            time.sleep(every)
        raise AssertionError(f"job {job_id} did not finish: {generation}")

    def balance(self) -> int:
        return self.http.get("/api/v1/credits", headers=self.headers()).json()["credits"]["balance"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_cache_dir):
    from retouch.models.tiny import build_tiny_models
    from retouch.serving.runtime import ray_temp_dir

    build_tiny_models(tiny_cache_dir)
    home = tmp_path_factory.mktemp("serve-home")
    env = {"RETOUCH_MODEL_CACHE": str(tiny_cache_dir), "RETOUCH_LEASE_SECONDS": str(LEASE_SECONDS),
           "RETOUCH_DISPATCHER_CONCURRENCY": "1"}
    try:
        with retouch_serve(home, "--executor", "ray", "--profile", "tiny", "--device", "cpu",
                           env=env) as serve, \
                httpx.Client(base_url=serve.base_url, timeout=30) as http:
            account = cli_json(home, "accounts", "create", "--name", "e2e", "--plan", "plus",
                               "--credits", "100000")
            secret = cli_json(home, "keys", "create", "--account", account["id"])["secret"]
            yield Server(home, serve, http, secret)
    finally:
        shutil.rmtree(ray_temp_dir(home), ignore_errors=True)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), (30, 60, 200))
    image.paste((240, 200, 20), (width // 4, height // 4, width // 2, height // 2))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_server_starts_and_prints_its_url(server):
    assert server.ready_seconds < 90
    deadline = time.monotonic() + 5
    while f"retouch ready at {server.base}" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.1)


def test_readme_quickstart_upload_edit_replay_poll_download(server):
    upload = server.http.post("/api/v1/uploads", headers=server.headers(),
                              files={"file": ("shoe.png", png(96, 64), "image/png")})
    assert upload.status_code == 201, upload.text
    upload_id = upload.json()["upload"]["id"]
    balance_before = server.balance()
    body = {"tool": "editor",
            "input": {"images": [{"upload_id": upload_id}],
                      "prompt": "Make the background look like a luxury studio."},
            "options": {"quality": "medium", "aspect_ratio": "4:5"}}

    created = server.http.post("/api/v1/generations", json=body,
                               headers=server.headers(**{"Idempotency-Key": "edit-001"}))
    assert created.status_code == 201, created.text
    generation = created.json()["generation"]
    assert generation["status"] in ("pending", "processing") and generation["tool"] == "editor"
    replay = server.http.post("/api/v1/generations", json=body,
                              headers=server.headers(**{"Idempotency-Key": "edit-001"}))
    assert replay.status_code == 200, replay.text
    assert replay.json()["generation"]["id"] == generation["id"]
    assert server.balance() == balance_before - generation["cost_credits"]  # charged once

    done = server.wait_terminal(generation["id"], every=0.5)
    assert done["status"] == "completed", done
    assert done["error_code"] is None
    image_response = server.http.get(done["output_url"])
    assert image_response.status_code == 200
    with Image.open(io.BytesIO(image_response.content)) as output:
        assert output.format == "PNG" and output.size == (1536, 1920)  # the seed's 4:5 size
    assert server.balance() == balance_before - generation["cost_credits"]


def _replica_processes(server_pid: int, family: str):
    import psutil

    found = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if f"ServeReplica:retouch-{family}" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_job_whose_replica_dies_is_retried_or_refunded_not_stuck(server):
    replicas = _replica_processes(server.process.pid, "diffusion")
    assert len(replicas) == 1, [p.cmdline() for p in replicas]
    upload = server.http.post("/api/v1/uploads", headers=server.headers(),
                              files={"file": ("room.png", png(64, 64), "image/png")})
    upload_id = upload.json()["upload"]["id"]
    balance_before = server.balance()
    # Ten frames: long enough to watch progress arrive from the replica, then kill it.
    body = {"tool": "photographer", "input": {"main_image": {"upload_id": upload_id}},
            "options": {"mode": "carousel", "quality": "high"}}
    created = server.http.post("/api/v1/generations", json=body, headers=server.headers())
    assert created.status_code == 201, created.text
    job = created.json()["generation"]

    deadline = time.monotonic() + 30
    while True:
        state = server.http.get(f"/api/v1/generations/{job['id']}",
                                headers=server.headers()).json()["generation"]
        if state["status"] == "processing" and state["progress"] > 0:
            break  # progress travelled replica → progress board → dispatcher → job row → API
        assert state["status"] in ("pending", "processing"), state
        assert time.monotonic() < deadline, state
        time.sleep(0.02)
    replicas[0].kill()  # SIGKILL the Serve replica running the job

    done = server.wait_terminal(job["id"], timeout=120)
    if done["status"] == "failed":
        assert done["error_code"] == "service_unavailable"
        assert server.balance() == balance_before  # refunded
    else:
        assert done["status"] == "completed" and len(done["output_urls"]) == 10
        assert server.balance() == balance_before - job["cost_credits"]
    credits = server.http.get("/api/v1/credits", headers=server.headers()).json()["credits"]
    assert credits["queue"]["active"] == 0  # slots freed either way
    assert _attempts(server.home, job["id"]) == 2  # the killed run counted; one retry


def _attempts(home: Path, job_id: str) -> int:
    from retouch.serving.core.db import make_engine, make_session_factory
    from retouch.serving.core.tables import Generation

    engine = make_engine(f"sqlite:///{home / 'retouch.db'}")
    try:
        with make_session_factory(engine)() as session:
            return session.get_one(Generation, job_id).attempts
    finally:
        engine.dispose()
