"""The in-process executor: jobs created over HTTP run on the tiny engine and settle."""

from __future__ import annotations

import io
import time

from PIL import Image

from retouch.serving.core.tables import Generation
from retouch.serving.executor import InProcessExecutor, JobExecutor

from api_fixtures import api_for, image_bytes, make_settings, serve_routes


def wait_for_terminal(api, secret: str, generation_id: str, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        generation = api.client.get(f"/api/v1/generations/{generation_id}",
                                    headers=api.headers(secret)).json()["generation"]
        if generation["status"] in ("completed", "failed"):
            return generation
        time.sleep(0.1)
    raise AssertionError(f"generation {generation_id} did not finish in {timeout_s}s")


def test_generator_and_upscaler_jobs_complete_with_fetchable_outputs(tmp_path, tiny_store):
    from retouch.serving.runner import TaskRunner

    def executor(services):
        return InProcessExecutor(services, lambda: TaskRunner(tiny_store))

    with api_for(make_settings(tmp_path), executor=executor) as api:
        assert isinstance(api.services.executor, JobExecutor)
        assert api.services.executor.available()
        _, secret = api.key(api.account(plan="pro", credits=1000))
        created = api.generate(secret, {"tool": "generator", "input": {"prompt": "a red cube"},
                                        "options": {"quality": "low", "output_format": "webp",
                                                    "seed": 7}})
        assert created.status_code == 201, created.text
        upload = api.upload(secret, image_bytes(20, 16))
        upscale = api.generate(secret, {"tool": "upscaler",
                                        "input": {"image": {"upload_id": upload["id"]}},
                                        "options": {"scale": 2}})
        assert upscale.status_code == 201, upscale.text

        done = wait_for_terminal(api, secret, created.json()["generation"]["id"])
        assert done["status"] == "completed", done
        with api.services.session_factory() as session:  # the models it was made with
            revisions = session.get(Generation, done["id"]).model_revisions
        assert revisions["base"] == tiny_store.revision("base")
        assert revisions["base"].startswith("sha256:")
        assert done["progress"] == 1.0 and done["error_code"] is None
        output = api.client.get(done["output_url"].removeprefix("http://testserver"))
        assert output.status_code == 200 and output.headers["content-type"] == "image/webp"
        image = Image.open(io.BytesIO(output.content))
        assert image.format == "WEBP" and min(image.size) > 0

        upscaled = wait_for_terminal(api, secret, upscale.json()["generation"]["id"])
        assert upscaled["status"] == "completed", upscaled
        data = api.client.get(upscaled["output_url"].removeprefix("http://testserver")).content
        assert Image.open(io.BytesIO(data)).size == (40, 32)

        credits = api.client.get("/api/v1/credits", headers=api.headers(secret)).json()
        assert credits["credits"]["balance"] == 1000 - 40 - 40  # both charged, none refunded
        assert credits["credits"]["queue"]["active"] == 0  # slots freed
    assert api.services.executor.dispatcher is None  # stopped with the app


def test_a_url_input_is_read_from_storage_not_refetched(tmp_path, tiny_store):
    """The image behind a URL is fetched at create time; the job runs after the server is gone."""
    from retouch.serving.runner import TaskRunner

    source = image_bytes(24, 16, color=(10, 120, 230))
    with api_for(make_settings(tmp_path, allow_private_urls=True)) as api:  # no executor yet
        _, secret = api.key()
        with serve_routes({"/in.png": (200, {"Content-Type": "image/png"}, source)}) as base:
            created = api.generate(secret, {"tool": "upscaler",
                                            "input": {"image": f"{base}/in.png"},
                                            "options": {"scale": 2}})
        assert created.status_code == 201, created.text
        executor = InProcessExecutor(api.services, lambda: TaskRunner(tiny_store))
        executor.start()
        try:
            done = wait_for_terminal(api, secret, created.json()["generation"]["id"])
        finally:
            executor.stop()
        assert done["status"] == "completed", done
        data = api.client.get(done["output_url"].removeprefix("http://testserver")).content
        assert Image.open(io.BytesIO(data)).size == (48, 32)


class _BrokenEngine:
    def run(self, request, images, ctx):
        raise RuntimeError("the GPU fell off")


def test_a_failing_job_is_reported_failed_and_refunded(tmp_path):
    def executor(services):
        return InProcessExecutor(services, _BrokenEngine)

    with api_for(make_settings(tmp_path), executor=executor) as api:
        _, secret = api.key(api.account(credits=500))
        created = api.generate(secret, {"tool": "generator", "input": {"prompt": "x"},
                                        "options": {"quality": "medium"}})
        assert created.status_code == 201
        done = wait_for_terminal(api, secret, created.json()["generation"]["id"])
        assert done["status"] == "failed" and done["error_code"] == "service_unavailable"
        assert done["output_url"] is None and "GPU fell off" not in (done["error"] or "")
        credits = api.client.get("/api/v1/credits", headers=api.headers(secret)).json()
        assert credits["credits"]["balance"] == 500 and credits["credits"]["queue"]["active"] == 0


def test_the_returned_seed_reproduces_the_output_bytes(tmp_path, tiny_store):
    """A job created without a seed reports the one it drew and the models it ran on; the same
    request sent again with that seed gives the same bytes, another seed does not."""
    from retouch.serving.runner import TaskRunner

    def executor(services):
        return InProcessExecutor(services, lambda: TaskRunner(tiny_store))

    body = {"tool": "generator", "input": {"prompt": "a lighthouse at dusk"},
            "options": {"quality": "low", "output_format": "png"}}
    with api_for(make_settings(tmp_path), executor=executor) as api:
        _, secret = api.key(api.account(plan="pro", credits=1000))

        def run(options: dict) -> tuple[dict, bytes]:  # one job at a time: nothing batches
            created = api.generate(secret, {**body, "options": {**body["options"], **options}})
            assert created.status_code == 201, created.text
            assert isinstance(created.json()["generation"]["seed"], int)
            done = wait_for_terminal(api, secret, created.json()["generation"]["id"])
            assert done["status"] == "completed", done
            return done, api.client.get(done["output_url"].removeprefix("http://testserver")).content

        first, first_bytes = run({})
        seed = first["seed"]
        assert 0 <= seed < 2**32
        assert first["model_revisions"]["base"] == tiny_store.revision("base")
        again, again_bytes = run({"seed": seed})
        assert again["seed"] == seed and again["model_revisions"] == first["model_revisions"]
        assert again_bytes == first_bytes
        other, other_bytes = run({"seed": (seed + 1) % 2**32})
        assert other_bytes != first_bytes
        pending = api.generate(secret, {**body, "options": {**body["options"], "seed": 5}})
        assert pending.json()["generation"]["model_revisions"] is None  # not run yet
        assert pending.json()["generation"]["seed"] == 5
