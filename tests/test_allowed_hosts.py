"""The operator's allow-list of image source hosts (`RETOUCH_ALLOWED_IMAGE_HOSTS`): off by
default, the `wixma` preset is the reference's list plus this server's host, every hop is
checked before any lookup, and every URL field refuses other hosts with `invalid_input` naming
the field (webhook URLs are not image sources and stay free)."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from retouch.serving.core.errors import InvalidInput
from retouch.serving.core.fetch import (WIXMA_SOURCE_HOSTS, ImageFetcher, host_matches,
                                        make_fetcher, source_host_patterns)
from retouch.serving.executor import InProcessExecutor
from retouch.serving.settings import Settings

from api_fixtures import api_for, assert_error, image_bytes, make_settings

PUBLIC_IP = "93.184.216.34"
PNG = image_bytes(40, 30)
ALLOWED = "https://images.unsplash.com/photo-1.png"
REFUSED = "https://evil.example/photo-1.png"


def fake_web(seen: list[str]):
    """Every host resolves to a public address and serves PNG; redirects from /hop."""

    def resolver(host, port):
        seen.append(host)
        return [PUBLIC_IP]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/hop":
            return httpx.Response(302, headers={"location": REFUSED})
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    return resolver, httpx.MockTransport(handler)


def use_fake_web(fetcher: ImageFetcher) -> list[str]:
    seen: list[str] = []
    fetcher.resolver, fetcher.transport = fake_web(seen)
    return seen


@pytest.mark.parametrize("host,pattern,matches", [
    ("res.cloudinary.com", "res.cloudinary.com", True),
    ("RES.Cloudinary.com.", "res.cloudinary.com", True),
    ("cloudinary.com", "res.cloudinary.com", False),
    ("acme.imgix.net", "*.imgix.net", True),
    ("a.b.imgix.net", "*.imgix.net", True),
    ("imgix.net", "*.imgix.net", False),
    ("evilimgix.net", "*.imgix.net", False),
    ("imgix.net.evil.example", "*.imgix.net", False),
    ("xyz.supabase.co", "*.supabase.co", True),
    ("xyz.supabase.co.evil.example", "*.supabase.co", False),
])
def test_host_patterns(host, pattern, matches):
    assert host_matches(host, pattern) is matches


def test_the_setting_is_off_by_default_and_the_preset_adds_this_servers_host(monkeypatch):
    assert source_host_patterns(Settings()) is None
    assert make_fetcher(Settings()).allowed_hosts is None
    monkeypatch.setenv("RETOUCH_ALLOWED_IMAGE_HOSTS", "wixma, cdn.example.com")
    monkeypatch.setenv("RETOUCH_PUBLIC_BASE_URL", "https://retouch.example.org")
    settings = Settings()
    assert settings.allowed_image_hosts == ["wixma", "cdn.example.com"]
    patterns = make_fetcher(settings).allowed_hosts
    assert patterns == (*WIXMA_SOURCE_HOSTS, "cdn.example.com", "retouch.example.org")
    for host in ("abc.supabase.co", "v3.fal.media", "fal.media", "res.cloudinary.com",
                 "acme.imgix.net", "images.unsplash.com",
                 "oaidalleapiprodscus.blob.core.windows.net", "retouch.example.org"):
        assert any(host_matches(host, p) for p in patterns), host


def test_a_refused_host_is_never_looked_up_and_redirects_are_checked():
    fetcher = ImageFetcher(allowed_hosts=("images.unsplash.com",))
    seen = use_fake_web(fetcher)
    assert fetcher.fetch(ALLOWED, "input.image").image.data == PNG
    assert seen == ["images.unsplash.com"]
    for url in (REFUSED, "https://images.unsplash.com.evil.example/a.png"):
        with pytest.raises(InvalidInput) as caught:
            fetcher.fetch(url, "input.image")
        assert caught.value.field == "input.image"
        assert "not an allowed source host" in caught.value.message
    assert seen == ["images.unsplash.com"]  # no lookup for the refused hosts
    with pytest.raises(InvalidInput, match="evil.example"):  # an allowed host's redirect away
        fetcher.fetch("https://images.unsplash.com/hop", "input.image")
    assert seen == ["images.unsplash.com"] * 2


def _aixpose_secret(api) -> str:
    from retouch.serving.core import keys
    from retouch.serving.core.db import transaction

    account_id = api.account(plan="pro", credits=5000)
    with transaction(api.services.session_factory) as session:
        return keys.create_key(session, account_id, surface="aixpose")[1]


def refused(response, field: str) -> None:
    body = assert_error(response, 400, "invalid_input", field)
    assert "not an allowed source host" in body["message"], body


def test_every_url_field_is_held_to_the_list(tmp_path):
    settings = make_settings(tmp_path, allowed_image_hosts=["wixma"])
    with api_for(settings, executor=lambda s: InProcessExecutor(s, lambda: None)) as api:
        seen = use_fake_web(api.services.fetcher)
        _, wixma = api.key(api.account(plan="pro", credits=100_000))
        bodies = {  # field → (create body with the refused URL there, with the allowed one)
            "input.images[0]": lambda url: {"tool": "editor", "input": {"images": [url]}},
            "input.images[1]": lambda url: {"tool": "editor", "input": {  # a reference image
                "images": [ALLOWED, url], "prompt": "x"}},
            "input.main_image": lambda url: {"tool": "photographer", "options": {"mode": "angle_change"},
                                             "input": {"main_image": url,
                                                       "angle": "eye level, front"}},
            "input.secondary_images[0]": lambda url: {
                "tool": "photographer", "options": {"mode": "object_placement"},
                "input": {"main_image": ALLOWED, "secondary_images": [url],
                          "text_prompt": "a lamp"}},
            "input.image": lambda url: {"tool": "upscaler", "input": {"image": url}},
        }
        for field, body in bodies.items():
            refused(api.generate(wixma, body(REFUSED)), field)
            accepted = api.generate(wixma, body(ALLOWED))
            assert accepted.status_code == 201, (field, accepted.text)
        assert "evil.example" not in seen

        aixpose = _aixpose_secret(api)
        headers = api.headers(aixpose)
        project_id = api.client.post("/v1/projects", headers=headers,
                                     json={"name": "hosts"}).json()["id"]
        picture_body = {"scene_type": "interior", "scene_location": "living_room",
                        "webhook_url": "https://hooks.partner.example/aixpose"}  # not an image
        pictures = f"/v1/projects/{project_id}/pictures"
        refused(api.client.post(pictures, headers=headers, json={
            **picture_body, "source": {"type": "url", "url": REFUSED}}), "source.url")
        picture = api.client.post(pictures, headers=headers, json={
            **picture_body, "source": {"type": "url", "url": ALLOWED}})
        assert picture.status_code == 201, picture.text
        refused(api.client.post("/v1/videos", headers=headers, json={
            "project_id": project_id, "picture_ids": [picture.json()["id"]], "duration": 2,
            "music_url": REFUSED}), "music_url")
        assert "evil.example" not in seen


def test_the_mcp_upload_tool_is_held_to_the_list(tmp_path):
    from mcp_fixtures import mcp_session, serve_app, tool_error, tool_json

    async def calls(app, secret):
        async with mcp_session(app.mcp_url, secret) as session:
            error = tool_error(await session.call_tool("wixma_upload_image", {"url": REFUSED}))
            assert error["code"] == "invalid_input" and error["details"]["field"] == "url"
            assert "not an allowed source host" in error["message"]
            done = tool_json(await session.call_tool("wixma_upload_image", {"url": ALLOWED}))
            assert done["upload"]["width"] == 40

    with serve_app(tmp_path, allowed_image_hosts=["images.unsplash.com"]) as app:
        seen = use_fake_web(app.services.fetcher)
        _, secret = app.key()
        asyncio.run(calls(app, secret))
        assert seen == ["images.unsplash.com"]
