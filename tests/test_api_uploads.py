"""POST /api/v1/uploads: real bytes and dimensions validated, stored and fetchable."""

from __future__ import annotations

import re

from api_fixtures import assert_error, image_bytes


def test_a_real_png_is_accepted_with_its_dimensions_and_is_fetchable(api):
    _, secret = api.key()
    data = image_bytes(40, 20)
    response = api.client.post("/api/v1/uploads", headers=api.headers(secret),
                               files={"file": ("photo.png", data, "image/png")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["object"] == "response" and body["request_id"].startswith("req_")
    upload = body["upload"]
    assert set(upload) == {"id", "object", "url", "media_type", "width", "height", "bytes",
                           "created_at"}
    assert upload["object"] == "upload"
    assert (upload["width"], upload["height"]) == (40, 20)
    assert upload["bytes"] == len(data) and upload["media_type"] == "image/png"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", upload["created_at"])
    assert upload["url"].startswith("http://testserver/files/uploads/")
    fetched = api.client.get(upload["url"].removeprefix("http://testserver"))
    assert fetched.status_code == 200
    assert fetched.content == data and fetched.headers["content-type"] == "image/png"


def test_jpeg_and_webp_are_accepted_with_their_media_types(api):
    _, secret = api.key()
    for fmt, media_type in (("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        upload = api.upload(secret, image_bytes(17, 33, fmt=fmt), name=f"x.{fmt.lower()}")
        assert upload["media_type"] == media_type
        assert (upload["width"], upload["height"]) == (17, 33)


def test_a_text_file_renamed_png_is_rejected(api):
    _, secret = api.key()
    response = api.client.post("/api/v1/uploads", headers=api.headers(secret),
                               files={"file": ("fake.png", b"hello, I am text\n" * 10,
                                               "image/png")})
    assert_error(response, 400, "invalid_input", field="file")


def test_a_truncated_png_is_rejected(api):
    _, secret = api.key()
    data = image_bytes(64, 64)
    response = api.client.post("/api/v1/uploads", headers=api.headers(secret),
                               files={"file": ("cut.png", data[: len(data) // 2], "image/png")})
    assert_error(response, 400, "invalid_input", field="file")


def test_a_missing_file_field_names_the_field(api):
    _, secret = api.key()
    response = api.client.post("/api/v1/uploads", headers=api.headers(secret),
                               data={"other": "x"})
    assert_error(response, 400, "invalid_input", field="file")


def test_uploads_need_the_uploads_create_scope(api):
    _, secret = api.key(scopes=["generations:create"])
    response = api.client.post("/api/v1/uploads", headers=api.headers(secret),
                               files={"file": ("a.png", image_bytes(), "image/png")})
    error = assert_error(response, 403, "forbidden")
    assert error["details"] == {"required_scope": "uploads:create"}


def test_files_route_hides_unknown_and_escaping_keys(api):
    assert_error(api.client.get("/files/uploads/nope.png"), 404, "invalid_input")
    assert api.client.get("/files/../retouch.db").status_code in (400, 404)


def test_uploads_over_the_size_cap_are_rejected(api, monkeypatch):
    from retouch.serving.core import image_refs

    _, secret = api.key()
    data = image_bytes(64, 64)
    monkeypatch.setattr(image_refs, "MAX_IMAGE_BYTES", len(data) - 1)
    response = api.client.post("/api/v1/uploads", headers=api.headers(secret),
                               files={"file": ("big.png", data, "image/png")})
    error = assert_error(response, 400, "invalid_input", field="file")
    assert "larger than" in error["message"]
