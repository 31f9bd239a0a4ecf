"""Every tool and photographer mode through HTTP on the tiny profile, run by the dispatcher with the
in-process executor: create → poll → completed, outputs downloadable at the expected size."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from api_fixtures import api_for, image_bytes, make_settings
from retouch.serving.executor import InProcessExecutor, runner_factory_for

pytestmark = pytest.mark.timeout(300)

SOURCE = (80, 56)  # the uploaded photo's size; "original" outputs keep it


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_cache_dir):
    from retouch.models.tiny import build_tiny_models

    build_tiny_models(tiny_cache_dir)
    settings = make_settings(tmp_path_factory.mktemp("e2e-tools"), model_cache=tiny_cache_dir)

    def executor(services):
        return InProcessExecutor(services, runner_factory_for(settings), concurrency=1,
                                 poll_seconds=0.02)

    with api_for(settings, executor=executor) as instance:
        yield instance


@pytest.fixture(scope="module")
def client(api):
    _, secret = api.key(api.account(plan="pro", credits=1_000_000))
    photo = api.upload(secret, image_bytes(*SOURCE))["id"]
    person = api.upload(secret, image_bytes(48, 64, color=(20, 120, 60)))["id"]
    mask = Image.new("RGB", SOURCE, (0, 0, 0))
    mask.paste((255, 255, 255), (20, 14, 60, 42))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    mask_id = api.upload(secret, buffer.getvalue())["id"]
    return api, secret, {"photo": photo, "person": person, "mask": mask_id}


def _bodies(ids: dict[str, str]) -> dict[str, tuple[dict, int, tuple[int, int] | None]]:
    photo, person, mask = ({"upload_id": ids[k]} for k in ("photo", "person", "mask"))

    def photographer(mode: str, **inputs) -> dict:
        return {"tool": "photographer", "input": {"main_image": photo, **inputs},
                "options": {"mode": mode, "quality": "low"}}

    return {
        "generator": ({"tool": "generator", "input": {"prompt": "a red sneaker"},
                       "options": {"quality": "low", "output_format": "webp"}}, 1, None),
        "editor": ({"tool": "editor", "input": {"images": [photo, person], "prompt": "studio"},
                    "options": {"quality": "low", "output_format": "jpeg"}}, 1, SOURCE),
        "person_placement": (photographer("person_placement", secondary_images=[person]), 1,
                             SOURCE),
        "angle_change": (photographer("angle_change", angle="eye level, left side"), 1, SOURCE),
        "cloth_change": (photographer("cloth_change", text_prompt="a navy suit"), 1, SOURCE),
        "time_change": (photographer("time_change", time="Golden Hour", weather="Foggy"), 1,
                        SOURCE),
        "location_change": (photographer("location_change", text_prompt="a courtroom"), 1,
                            SOURCE),
        "carousel": (photographer("carousel"), 10, SOURCE),
        "object_placement": (photographer("object_placement", text_prompt="a vase on the table"),
                             1, SOURCE),
        "erase_edit": (photographer("erase_edit", mask_image=mask), 1, SOURCE),
        "upscaler": ({"tool": "upscaler", "input": {"image": photo}, "options": {"scale": 2}}, 1,
                     (SOURCE[0] * 2, SOURCE[1] * 2)),
        "ai_filter": ({"tool": "ai_filter", "input": {"image": photo, "filter": "noir-bw"},
                       "options": {"quality": "low"}}, 1, SOURCE),
    }


CASES = ("generator", "editor", "person_placement", "angle_change", "cloth_change",
         "time_change", "location_change", "carousel", "object_placement", "erase_edit",
         "upscaler", "ai_filter")


@pytest.mark.parametrize("case", CASES)
def test_tool_completes_through_http(client, case):
    api, secret, ids = client
    body, outputs, size = _bodies(ids)[case]
    created = api.generate(secret, body)
    assert created.status_code == 201, created.text
    job_id = created.json()["generation"]["id"]

    deadline = time.monotonic() + 120
    while True:
        job = api.client.get(f"/api/v1/generations/{job_id}",
                             headers=api.headers(secret)).json()["generation"]
        if job["status"] in ("completed", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert job["status"] == "completed", job
    urls = job["output_urls"] if outputs > 1 else [job["output_url"]]
    assert len(urls) == outputs
    for url in urls[:2]:
        response = api.client.get(url.removeprefix("http://testserver"))
        assert response.status_code == 200
        with Image.open(io.BytesIO(response.content)) as image:
            expected_format = body["options"].get("output_format", "png").upper()
            assert image.format == expected_format
            if size is not None:
                assert image.size == size
            else:
                assert image.width == image.height >= 16  # the model's native square
