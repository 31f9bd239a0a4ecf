"""AIXpose output formats: the catalog lists them, an enhancement's `output_format` (or the
project's `picture_format`) decides the stored bytes, an unknown format is `invalid_input`
naming the field."""

from __future__ import annotations

import base64

from retouch.serving.core import keys
from retouch.serving.core.db import transaction
from retouch.serving.core.tables import Generation

from api_fixtures import api_for, assert_error, image_bytes, make_settings


def test_catalog_and_format_defaults_and_validation(tmp_path):
    with api_for(make_settings(tmp_path)) as api:
        account_id = api.account()
        with transaction(api.services.session_factory) as session:
            _, secret = keys.create_key(session, account_id, surface="aixpose")
        headers = api.headers(secret)
        catalog = api.client.get("/v1/catalog/output-formats", headers=headers).json()
        assert [(f["output"], f["id"]) for f in catalog["data"]] == [
            ("picture", "jpeg"), ("picture", "png"), ("picture", "webp"),
            ("video", "mp4"), ("video", "webm")]
        assert_error(api.client.post("/v1/projects", headers=headers,
                                     json={"name": "x", "picture_format": "gif"}),
                     400, "invalid_input", "picture_format")
        project = api.client.post("/v1/projects", headers=headers, json={
            "name": "x", "picture_format": "webp", "video_format": "webm"}).json()
        assert project["picture_format"] == "webp" and project["video_format"] == "webm"
        source = api.client.post(f"/v1/projects/{project['id']}/pictures", headers=headers,
                                 json={"source": {"type": "base64", "media_type": "image/png",
                                                  "data": base64.b64encode(
                                                      image_bytes(64, 48)).decode()},
                                       "scene_type": "interior"}).json()
        path = f"/v1/pictures/{source['id']}/enhancements"
        instruction = {"source": "preset", "actions": ["interior-style-japandi"]}
        assert_error(api.client.post(path, headers=headers, json={
            "instruction": instruction, "output_format": "gif"}),
            400, "invalid_input", "output_format")
        assert api.client.post(path, headers=headers,
                               json={"instruction": instruction}).status_code == 201
        assert api.client.post(path, headers=headers, json={
            "instruction": instruction, "output_format": "png"}).status_code == 201
        with api.services.session_factory() as session:
            formats = [job.request["options"]["output_format"]
                       for job in session.query(Generation).order_by(Generation.created_at)]
        assert formats == ["webp", "png"]  # the project default, then the request's
