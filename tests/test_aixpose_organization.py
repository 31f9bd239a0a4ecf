"""AIXpose organization (`/v1/organization`: name, branding, default outputs), branding applied
to published pictures, and the published media list for mirroring (ETags, `updated_after`,
`If-None-Match`), plus ETags on stored files."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from PIL import Image

from retouch.serving.core import keys
from retouch.serving.core.db import transaction

from api_fixtures import api_for, assert_error, image_bytes, make_settings

SIZE = (200, 100)


@pytest.fixture
def aix(tmp_path):
    with api_for(make_settings(tmp_path)) as api:
        account_id = api.account(plan="pro", credits=1000)
        with transaction(api.services.session_factory) as session:
            api.secret = keys.create_key(session, account_id, surface="aixpose")[1]
        yield api


def call(api, method: str, path: str, body=None, **headers):
    return api.client.request(method, path, json=body,
                              headers={"Authorization": f"Bearer {api.secret}", **headers})


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def b64_png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"type": "base64", "media_type": "image/png",
            "data": base64.b64encode(buffer.getvalue()).decode()}


def fetch(api, url: str, **headers):
    return api.client.get(url.removeprefix("http://testserver"), headers=headers)


def approved_picture(api, project_id: str, color=(40, 90, 160)) -> dict:
    source = {"type": "base64", "media_type": "image/png",
              "data": base64.b64encode(image_bytes(*SIZE, color=color)).decode()}
    picture = ok(call(api, "POST", f"/v1/projects/{project_id}/pictures",
                      {"source": source, "scene_type": "interior",
                       "scene_location": "living_room"}), 201)
    ok(call(api, "POST", f"/v1/pictures/{picture['id']}/approve"))
    return picture


def test_organization_defaults_patch_and_project_defaults(aix):
    org = ok(call(aix, "GET", "/v1/organization"))
    assert org["object"] == "organization" and org["name"]
    assert org["branding"] == {"enabled": False, "logo_url": None, "placement": "bottom_right",
                               "opacity": 0.8, "scale": 0.2}
    assert org["default_output"] == {}
    assert_error(call(aix, "PATCH", "/v1/organization", {"branding": {"enabled": True}}),
                 400, "invalid_input", "branding.logo")
    assert_error(call(aix, "PATCH", "/v1/organization", {"branding": {"opacity": 2}}),
                 400, "invalid_input", "branding.opacity")
    assert_error(call(aix, "PATCH", "/v1/organization", {"branding": {"placement": "middle"}}),
                 400, "invalid_input", "branding.placement")
    patched = ok(call(aix, "PATCH", "/v1/organization", {
        "name": "Acme Realty", "default_output": {"picture_resolution": "4K",
                                                  "picture_aspect_ratio": "16:9"}}))
    assert patched["name"] == "Acme Realty"
    assert patched["default_output"] == {"picture_resolution": "4K",
                                         "picture_aspect_ratio": "16:9"}
    assert ok(call(aix, "GET", "/v1/organization")) == patched
    project = ok(call(aix, "POST", "/v1/projects", {"name": "p"}), 201)
    assert (project["picture_resolution"], project["picture_aspect_ratio"]) == ("4K", "16:9")
    explicit = ok(call(aix, "POST", "/v1/projects", {"name": "q", "picture_resolution": "1K"}),
                  201)
    assert (explicit["picture_resolution"], explicit["picture_aspect_ratio"]) == ("1K", "16:9")
    assert_error(call(aix, "PATCH", "/v1/organization", {"default_output": {
        "picture_format": "gif"}}), 400, "invalid_input", "default_output.picture_format")
    ok(call(aix, "PATCH", "/v1/organization", {"default_output": {
        "picture_format": "webp", "video_format": "webm"}}))
    formats = ok(call(aix, "POST", "/v1/projects", {"name": "r"}), 201)
    assert (formats["picture_format"], formats["video_format"]) == ("webp", "webm")
    assert formats["picture_resolution"] == "4K"  # earlier defaults are kept


def test_enabled_branding_watermarks_the_published_corner_only(aix):
    project_id = ok(call(aix, "POST", "/v1/projects", {"name": "branded"}), 201)["id"]
    picture = approved_picture(aix, project_id)
    original = Image.open(io.BytesIO(fetch(aix, picture["public_url"]).content)).convert("RGB")

    plain = ok(call(aix, "POST", f"/v1/projects/{project_id}/publish"))["published_media"][0]
    assert plain["url"] == picture["public_url"]  # branding off: published as is

    logo = Image.new("RGBA", (40, 20), (255, 0, 0, 255))
    org = ok(call(aix, "PATCH", "/v1/organization", {"branding": {
        "enabled": True, "logo": b64_png(logo), "placement": "bottom_right", "opacity": 1.0,
        "scale": 0.25}}))
    assert org["branding"]["enabled"] and org["branding"]["logo_url"]
    media = ok(call(aix, "POST", f"/v1/projects/{project_id}/publish"))["published_media"]
    entry = media[0]
    assert entry["url"] != picture["public_url"]
    data = fetch(aix, entry["url"]).content
    assert entry["etag"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert entry["media_type"] == "image/png"
    again = ok(call(aix, "POST", f"/v1/projects/{project_id}/publish"))["published_media"][0]
    assert (again["url"], again["etag"], again["updated_at"]) == (
        entry["url"], entry["etag"], entry["updated_at"])  # the copy is reused
    branded = Image.open(io.BytesIO(data)).convert("RGB")
    assert branded.size == original.size
    # The logo: 25% of 200 px wide = 50×25, 2 px (2% of 100) from the bottom-right corner.
    box = (SIZE[0] - 2 - 50, SIZE[1] - 2 - 25, SIZE[0] - 2, SIZE[1] - 2)
    inside = branded.crop(box)
    assert inside.getcolors() == [(50 * 25, (255, 0, 0))]
    mask = Image.new("L", SIZE, 255)
    mask.paste(0, box)
    outside_before = Image.composite(original, Image.new("RGB", SIZE), mask)
    outside_after = Image.composite(branded, Image.new("RGB", SIZE), mask)
    assert outside_before.tobytes() == outside_after.tobytes()

    half = ok(call(aix, "PATCH", "/v1/organization", {"branding": {"opacity": 0.5,
                                                                   "placement": "top_left"}}))
    assert half["branding"]["placement"] == "top_left"
    entry = ok(call(aix, "POST", f"/v1/projects/{project_id}/publish"))["published_media"][0]
    faded = Image.open(io.BytesIO(fetch(aix, entry["url"]).content)).convert("RGB")
    r, g, b = faded.getpixel((10, 10))
    base = original.getpixel((10, 10))
    assert abs(r - (255 + base[0]) / 2) <= 2 and abs(g - base[1] / 2) <= 2
    assert faded.getpixel((SIZE[0] - 10, SIZE[1] - 10)) == original.getpixel(
        (SIZE[0] - 10, SIZE[1] - 10))


def test_published_media_mirroring_with_etags_and_updated_after(aix):
    project_id = ok(call(aix, "POST", "/v1/projects", {"name": "mirror"}), 201)["id"]
    media_path = f"/v1/projects/{project_id}/media"
    empty = ok(call(aix, "GET", media_path))
    assert empty["data"] == [] and empty["published_at"] is None
    first = approved_picture(aix, project_id, color=(10, 20, 30))
    ok(call(aix, "POST", f"/v1/projects/{project_id}/publish"))

    listed = call(aix, "GET", media_path)
    body = ok(listed)
    assert [m["id"] for m in body["data"]] == [first["id"]]
    item = body["data"][0]
    data = fetch(aix, item["url"]).content
    assert item["etag"] == hashlib.sha256(data).hexdigest() and item["bytes"] == len(data)
    tag = listed.headers["ETag"]
    assert call(aix, "GET", media_path, **{"If-None-Match": tag}).status_code == 304
    checkpoint = item["updated_at"]

    ok(call(aix, "POST", f"/v1/projects/{project_id}/publish"))  # unchanged bytes
    again = call(aix, "GET", media_path, **{"If-None-Match": tag})
    assert again.status_code == 200  # published_at moved on...
    assert again.json()["data"][0]["updated_at"] == checkpoint  # ...the item did not
    assert ok(call(aix, "GET", f"{media_path}?updated_after={checkpoint}"))["data"] == []

    second = approved_picture(aix, project_id, color=(200, 20, 30))
    third = approved_picture(aix, project_id, color=(20, 200, 30))
    ok(call(aix, "POST", f"/v1/projects/{project_id}/publish"))
    changed = ok(call(aix, "GET", f"{media_path}?updated_after={checkpoint}"))["data"]
    assert sorted(m["id"] for m in changed) == sorted([second["id"], third["id"]])

    seen, cursor = [], None
    while True:
        page = ok(call(aix, "GET", f"{media_path}?limit=1" + (f"&cursor={cursor}" if cursor
                                                              else "")))
        seen += [m["id"] for m in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen[0] == first["id"] and sorted(seen) == sorted([first["id"], second["id"],
                                                              third["id"]])
    assert_error(call(aix, "GET", f"{media_path}?updated_after=yesterday"), 400,
                 "invalid_input", "updated_after")
    assert_error(call(aix, "GET", f"{media_path}?cursor=nope"), 400, "invalid_input", "cursor")


def test_stored_files_send_an_etag_and_honour_if_none_match(aix):
    project_id = ok(call(aix, "POST", "/v1/projects", {"name": "files"}), 201)["id"]
    picture = approved_picture(aix, project_id)
    first = fetch(aix, picture["public_url"])
    tag = first.headers["ETag"]
    assert tag == f'"{hashlib.sha256(first.content).hexdigest()}"'
    cached = fetch(aix, picture["public_url"], **{"If-None-Match": f'W/{tag}, "other"'})
    assert cached.status_code == 304 and cached.content == b""
    assert fetch(aix, picture["public_url"], **{"If-None-Match": '"other"'}).status_code == 200


def _wav(seconds: float = 1.0, rate: int = 44100) -> bytes:
    import wave

    import numpy as np

    samples = (np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(rate * seconds)))
               * 8000).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def test_a_branded_video_has_the_logo_on_every_frame_and_keeps_its_audio():
    import av
    import numpy as np

    from retouch.pipelines.common import RunContext
    from retouch.pipelines.reel import ReelSpec, render_reel
    from retouch.serving.core.organizations import brand_video

    pictures = [Image.new("RGB", (128, 72), (30, 60, 120)), Image.new("RGB", (128, 72),
                                                                      (120, 60, 30))]
    reel = render_reel(pictures, ReelSpec(width=128, height=72, duration_s=2, fps=12),
                       RunContext(seed=0), music=_wav())
    logo = io.BytesIO()
    Image.new("RGBA", (20, 10), (255, 255, 255, 255)).save(logo, format="PNG")
    branded = brand_video(reel, logo.getvalue(), {"placement": "top_right", "opacity": 1.0,
                                                  "scale": 0.25})

    def frames(data: bytes):
        with av.open(io.BytesIO(data)) as container:
            assert len(container.streams.audio) == 1
            return [f.to_ndarray(format="rgb24").astype(int)
                    for f in container.decode(video=0)]

    before, after = frames(reel), frames(branded)
    assert len(after) == len(before) == 24 and after[0].shape == (72, 128, 3)
    # The logo: 32×16 px, 1 px (2% of 72) from the top-right corner.
    for old, new in zip(before, after):
        corner = new[4:14, 128 - 30:128 - 4]
        assert corner.mean() > 235 and old[4:14, 128 - 30:128 - 4].mean() < 150
        rest = np.abs(new[30:, :90] - old[30:, :90])
        assert rest.mean() < 3  # elsewhere only the re-encode's rounding
    with av.open(io.BytesIO(branded)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
        assert float(container.duration or 0) / av.time_base == pytest.approx(2.0, abs=0.2)


def test_publishing_with_branding_brands_a_completed_video(aix):
    import av

    from retouch.pipelines.common import RunContext
    from retouch.pipelines.reel import ReelSpec, render_reel
    from retouch.serving.core import jobs
    from retouch.serving.core.tables import ApiKey, Video
    from retouch.serving.tasks import parse_request

    project_id = ok(call(aix, "POST", "/v1/projects", {"name": "reel"}), 201)["id"]
    picture = approved_picture(aix, project_id)
    reel = render_reel([Image.new("RGB", (64, 36), (20, 40, 80))],
                       ReelSpec(width=64, height=36, duration_s=2, fps=12), RunContext(seed=0))
    sf, storage = aix.services.session_factory, aix.services.storage
    with sf() as session:
        key = session.query(ApiKey).filter(ApiKey.surface == "aixpose").one()
    body = {"tool": "generator", "input": {"prompt": "reel"}, "options": {"quality": "low"}}
    job, _ = jobs.create_job(sf, key, parse_request(body), body, surface="aixpose")
    with transaction(sf) as session:
        session.add(Video(account_id=key.account_id, project_id=project_id,
                          generation_id=job.id, picture_ids=[picture["id"]], duration_seconds=2,
                          aspect_ratio="16:9", resolution="1K", width=64, height=36, fps=12))
    leased = jobs.lease_next_job(sf, "w", 30)
    storage.put(f"outputs/{leased.id}/1.mp4", reel, "video/mp4")
    assert jobs.complete_job(sf, leased.id, "w", [f"outputs/{leased.id}/1.mp4"])

    logo = Image.new("RGBA", (16, 16), (255, 255, 255, 255))
    ok(call(aix, "PATCH", "/v1/organization", {"branding": {
        "enabled": True, "logo": b64_png(logo), "placement": "center", "opacity": 1.0,
        "scale": 0.25}}))
    media = ok(call(aix, "POST", f"/v1/projects/{project_id}/publish"))["published_media"]
    (video,) = [m for m in media if m["type"] == "video"]
    assert video["media_type"] == "video/mp4" and video["url"] != storage.url(
        f"outputs/{leased.id}/1.mp4")
    data = fetch(aix, video["url"]).content
    assert video["etag"] == hashlib.sha256(data).hexdigest()
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert frame[18, 32].min() > 230 and frame[2, 2].max() < 120  # centre logo, dark corner
