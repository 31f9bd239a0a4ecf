"""Hostile and unusual images, through the upload endpoint and through an image URL: each one in
`hostile_images.REFUSED` is `400 invalid_input` naming the field, with nothing stored, created
or charged; each one in `ACCEPTED` is converted and stored with its true (EXIF-oriented) size.
Also: images between Pillow's bomb threshold (89.5 Mpx) and the 100 Mpx cap are decoded."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image
from sqlalchemy import func, select

from retouch.pipelines.errors import PipelineInputError
from retouch.pipelines.images import decode_image
from retouch.serving.core.tables import Generation, Upload

from api_fixtures import api_for, assert_error, make_settings, serve_routes
from hostile_images import ACCEPTED, REFUSED, raw_png

CREDITS = 100_000


@pytest.fixture(scope="module")
def corpus_server():
    routes = {f"/{name}.png": (200, {"Content-Type": "image/png"}, make())
              for name, (make, _) in {**REFUSED, **ACCEPTED}.items()}
    with serve_routes(routes) as base:
        yield base


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with api_for(make_settings(tmp_path_factory.mktemp("hostile"), allow_private_urls=True)) \
            as instance:
        yield instance


def counts(api, key_id: str) -> tuple[int, int]:
    with api.services.session_factory() as session:
        uploads = session.scalar(select(func.count()).select_from(Upload)
                                 .where(Upload.api_key_id == key_id))
        jobs = session.scalar(select(func.count()).select_from(Generation)
                              .where(Generation.api_key_id == key_id))
    return uploads, jobs


def balance(api, secret: str) -> int:
    return api.client.get("/api/v1/credits", headers=api.headers(secret)).json()[
        "credits"]["balance"]


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_through_the_upload_endpoint_and_an_image_url(api, corpus_server, name):
    make, fragment = REFUSED[name]
    key_id, secret = api.key(api.account(credits=CREDITS))
    started = time.monotonic()
    uploaded = api.client.post("/api/v1/uploads", headers=api.headers(secret),
                               files={"file": (f"{name}.png", make(), "image/png")})
    error = assert_error(uploaded, 400, "invalid_input", "file")
    assert fragment in error["message"], error["message"]
    created = api.generate(secret, {"tool": "upscaler",
                                    "input": {"image": {"url": f"{corpus_server}/{name}.png"}}})
    error = assert_error(created, 400, "invalid_input", "input.image")
    assert fragment in error["message"], error["message"]
    assert time.monotonic() - started < 10
    assert counts(api, key_id) == (0, 0) and balance(api, secret) == CREDITS


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_and_converted(api, corpus_server, name):
    make, size = ACCEPTED[name]
    key_id, secret = api.key(api.account(credits=CREDITS))
    uploaded = api.client.post("/api/v1/uploads", headers=api.headers(secret),
                               files={"file": (f"{name}.png", make(), "image/png")})
    assert uploaded.status_code == 201, uploaded.text
    assert (uploaded.json()["upload"]["width"], uploaded.json()["upload"]["height"]) == size
    created = api.generate(secret, {"tool": "upscaler",
                                    "input": {"image": {"url": f"{corpus_server}/{name}.png"}}})
    assert created.status_code == 201, created.text
    with api.services.session_factory() as session:
        stored = session.scalars(select(Upload).where(Upload.api_key_id == key_id)).all()
    assert {(u.width, u.height) for u in stored} == {size}
    decoded = decode_image(make(), "file")
    assert decoded.mode == "RGB" and decoded.size == size


def test_images_between_pillows_bomb_threshold_and_the_cap_are_decoded():
    """9800x9700 (95 Mpx) is inside the documented limits; Pillow alone would refuse it with a
    raw `DecompressionBombWarning`."""
    buffer = io.BytesIO()
    Image.new("L", (9800, 9700), 90).save(buffer, format="PNG")
    assert Image.MAX_IMAGE_PIXELS < 9800 * 9700 <= 100_000_000
    image = decode_image(buffer.getvalue(), "file")
    assert image.size == (9800, 9700) and image.getpixel((9799, 9699)) == (90, 90, 90)
    with pytest.raises(PipelineInputError, match="at most 100 megapixels"):
        decode_image(raw_png(10050, 10000, b""), "file")
