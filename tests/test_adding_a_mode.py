"""Adding a photographer mode is one pipeline function and one registry line: a throwaway mode
registered only here is accepted over HTTP, priced, dispatched, run and listed by MCP, with no
other file changed (docs/design.md, "Adding a mode")."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
from PIL import Image, ImageOps

from retouch.serving.executor import InProcessExecutor
from retouch.serving.mcp.server import build_mcp_server
from retouch.serving.runner import TaskRunner
from retouch.serving.tasks import TASKS, photographer_mode

from api_fixtures import api_for, assert_error, image_bytes, make_settings


def mirror(store, request, images, ctx):
    """The whole pipeline of the new mode: the main image, mirrored."""
    ctx.report(0.5)
    return [ImageOps.mirror(images["input.main_image"])]


MIRROR = photographer_mode("mirror", mirror, summary="the photo, mirrored",
                           price=lambda request: 7)


def photograph(api, secret, upload_id):
    return api.generate(secret, {"tool": "photographer",
                                 "input": {"main_image": {"upload_id": upload_id}},
                                 "options": {"mode": "mirror"}})


def wait_until_settled(api, secret, generation_id, timeout_s=60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        generation = api.client.get(f"/api/v1/generations/{generation_id}",
                                    headers=api.headers(secret)).json()["generation"]
        if generation["status"] in ("completed", "failed"):
            return generation
        time.sleep(0.05)
    raise AssertionError(f"generation {generation_id} did not settle")


def test_a_mode_registered_in_one_line_runs_end_to_end(tmp_path, tiny_store):
    source = image_bytes(40, 24)
    with TASKS.registered(MIRROR):
        executor = lambda services: InProcessExecutor(services, lambda: TaskRunner(tiny_store))
        with api_for(make_settings(tmp_path), executor=executor) as api:
            _, secret = api.key(api.account(plan="plus", credits=100))
            upload = api.upload(secret, source)
            created = photograph(api, secret, upload["id"])
            assert created.status_code == 201, created.text
            generation = created.json()["generation"]
            assert generation["mode"] == "mirror" and generation["cost_credits"] == 7

            done = wait_until_settled(api, secret, generation["id"])
            assert done["status"] == "completed", done
            output = api.client.get(done["output_url"].removeprefix("http://testserver"))
            mirrored = ImageOps.mirror(Image.open(io.BytesIO(source)).convert("RGB"))
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(output.content))),
                                  np.asarray(mirrored))
            balance = api.client.get("/api/v1/credits", headers=api.headers(secret)).json()
            assert balance["credits"]["balance"] == 100 - 7

            schema = api.client.get("/openapi.json").json()["components"]["schemas"]
            assert "mirror" in schema["PhotographerOptions"]["properties"]["mode"]["enum"]

            tools = {tool.name: tool for tool in
                     asyncio.run(build_mcp_server(api.services).list_tools())}
            photographer = tools["wixma_photographer"]
            assert "mirror" in photographer.input_schema["properties"]["mode"]["enum"]
            assert "mirror: the photo, mirrored" in photographer.description

    # Unregistered again, the same request is refused before anything is charged.
    with api_for(make_settings(tmp_path / "after")) as api:
        _, secret = api.key(api.account(plan="plus", credits=100))
        upload = api.upload(secret, source)
        assert_error(photograph(api, secret, upload["id"]), 400, "invalid_input", "options.mode")
    assert "mirror" not in TASKS.modes("photographer")
