"""An upscale whose output the pipeline could not make is refused when the job is created,
naming `input.image`, before anything is reserved: no job, no charge, no slot. Checked for each
kind of image reference (upload, URL, completed generation)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from retouch.pipelines.errors import PipelineInputError
from retouch.pipelines.upscale import MAX_OUTPUT_PIXELS, check_upscale_output

from api_fixtures import (GENERATOR_BODY, api_for, assert_error, finish_next_job, make_settings,
                          serve_routes)

CREDITS = 100_000


def flat_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 100).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("size,scale,allowed", [
    ((9400, 9400), 4, False), ((9400, 9400), 2, False), ((4097, 4096), 2, False),
    ((4096, 4096), 2, True), ((2048, 2048), 4, True), ((2049, 2048), 4, False),
    ((9400, 9400), "4k", False), ((8000, 8000), "4k", True), ((1000, 9000), "4k", False),
    ((512, 512), "4k", True)])
def test_check_upscale_output(size, scale, allowed):
    if allowed:
        plan = check_upscale_output(*size, scale)
        assert plan.output_size[0] * plan.output_size[1] <= MAX_OUTPUT_PIXELS
        return
    with pytest.raises(PipelineInputError) as caught:
        check_upscale_output(*size, scale)
    assert caught.value.field == "input.image"


def test_an_impossible_upscale_is_refused_before_anything_is_reserved(tmp_path):
    big = flat_png(9400, 9400)
    with serve_routes({"/big.png": (200, {}, big)}) as base, api_for(
            make_settings(tmp_path, allow_private_urls=True)) as api:
        _, secret = api.key(api.account(credits=CREDITS))
        upload = api.upload(secret, big, "big.png")
        assert (upload["width"], upload["height"]) == (9400, 9400)
        # A completed generation whose output is 5000x5000: x2 would be 100 Mpx.
        assert api.generate(secret, GENERATOR_BODY).status_code == 201
        generation_id = finish_next_job(api, [flat_png(5000, 5000)])
        credits_before = api.client.get("/api/v1/credits", headers=api.headers(secret)).json()
        refs = {"upload": ({"upload_id": upload["id"]}, 4),
                "url": ({"url": f"{base}/big.png"}, 4),
                "generation": ({"generation_id": generation_id}, 2)}
        for name, (ref, scale) in refs.items():
            refused = api.generate(secret, {"tool": "upscaler", "input": {"image": ref},
                                            "options": {"scale": scale}})
            error = assert_error(refused, 400, "invalid_input", "input.image")
            assert "too large to upscale" in error["message"], (name, error)
        credits_after = api.client.get("/api/v1/credits", headers=api.headers(secret)).json()
        assert credits_after["credits"] == credits_before["credits"]  # balance, slots, budgets
        listed = api.client.get("/api/v1/generations?tool=upscaler",
                                headers=api.headers(secret)).json()
        assert listed["data"] == []
        fits = api.generate(secret, {"tool": "upscaler", "input": {"image": {
            "generation_id": generation_id}}, "options": {"scale": "4k"}})
        assert fits.status_code == 201, fits.text  # 5000 px is past 2160p: a resize only
