"""SSRF: the table of URL forms that must never reach a private, loopback, link-local (cloud
metadata), shared or reserved address, one parametrised row per case.

Image URLs, webhook URLs (a picture's `webhook_url`, an account-level endpoint's `url` on create
and PATCH) and `music_url` share the fetcher's vetting, so each row is checked on the vetting
function (`ImageFetcher.vet_url`), again as the target of a redirect from a public host (never
connected to), and one end-to-end request per field goes through the HTTP API.
"""

from __future__ import annotations

import httpx
import pytest

from retouch.serving.core.errors import InvalidInput
from retouch.serving.core.fetch import ImageFetcher, is_public_address
from retouch.serving.executor import InProcessExecutor

from api_fixtures import api_for, assert_error, image_bytes, make_settings

FIELD = "input.images[0]"
PUBLIC_IP = "93.184.216.34"
DNS = {  # a fake resolver: what each test host name answers
    "cdn.example": [PUBLIC_IP],
    "localhost": ["127.0.0.1", "::1"],
    "localhost.": ["127.0.0.1"],
    "internal.example": ["10.0.0.9"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": [PUBLIC_IP, "127.0.0.1"],
    "mixed6.example": ["2606:4700:4700::1111", "::1"],
    "sixtofour.example": ["2002:7f00:1::"],
    "nat64.example": ["64:ff9b::a9fe:a9fe"],
    "cgnat.example": ["100.64.0.7"],
}


def resolve(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError(f"no such host {host}")
    return DNS[host]


# (id, url) — every one must be refused.
REFUSED = [
    # loopback
    ("loopback", "https://127.0.0.1/a.png"),
    ("loopback-high", "https://127.255.255.254/a.png"),
    ("loopback-name", "https://localhost/a.png"),
    ("loopback-name-dot", "https://localhost./a.png"),
    ("loopback-fullwidth-dots", "https://127\u30020\u30020\u30021/a.png"),
    # RFC 1918
    ("rfc1918-10", "https://10.0.0.1/a.png"),
    ("rfc1918-172.16", "https://172.16.0.1/a.png"),
    ("rfc1918-172.31", "https://172.31.255.255/a.png"),
    ("rfc1918-192.168", "https://192.168.0.1/a.png"),
    ("rfc1918-by-dns", "https://internal.example/a.png"),
    # link-local and cloud metadata
    ("metadata", "https://169.254.169.254/latest/meta-data/"),
    ("link-local-v4", "https://169.254.0.1/a.png"),
    ("metadata-by-dns", "https://metadata.example/latest/meta-data/"),
    ("link-local-v6", "https://[fe80::1]/a.png"),
    ("link-local-v6-zone", "https://[fe80::1%25eth0]/a.png"),
    ("metadata-v6-ula", "https://[fd00:ec2::254]/latest/meta-data/"),
    # shared address space (CGNAT)
    ("cgnat-low", "https://100.64.0.1/a.png"),
    ("cgnat-high", "https://100.127.255.254/a.png"),
    ("cgnat-by-dns", "https://cgnat.example/a.png"),
    # unspecified
    ("zero", "https://0.0.0.0/a.png"),
    ("zero-short", "https://0/a.png"),
    ("zero-v6", "https://[::]/a.png"),
    # IPv6 loopback and unique-local
    ("loopback-v6", "https://[::1]/a.png"),
    ("ula-fc", "https://[fc00::1]/a.png"),
    ("ula-fd", "https://[fd12:3456::1]/a.png"),
    # IPv4-mapped, -translated and -compatible IPv6
    ("mapped-loopback", "https://[::ffff:127.0.0.1]/a.png"),
    ("mapped-loopback-hex", "https://[::ffff:7f00:1]/a.png"),
    ("mapped-metadata", "https://[::ffff:169.254.169.254]/a.png"),
    ("mapped-private", "https://[::ffff:10.0.0.1]/a.png"),
    ("translated-loopback", "https://[::ffff:0:127.0.0.1]/a.png"),
    ("compatible-loopback", "https://[::127.0.0.1]/a.png"),
    ("compatible-metadata", "https://[::169.254.169.254]/a.png"),
    # 6to4, Teredo and NAT64 embedding a private IPv4
    ("6to4-loopback", "https://[2002:7f00:1::]/a.png"),
    ("6to4-metadata", "https://[2002:a9fe:a9fe::]/a.png"),
    ("6to4-rfc1918", "https://[2002:c0a8:101::1]/a.png"),
    ("6to4-10", "https://[2002:a00:1::]/a.png"),
    ("6to4-by-dns", "https://sixtofour.example/a.png"),
    ("teredo", "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/a.png"),
    ("teredo-loopback-server", "https://[2001:0:7f00:1::1]/a.png"),
    ("nat64-loopback", "https://[64:ff9b::127.0.0.1]/a.png"),
    ("nat64-metadata", "https://[64:ff9b::a9fe:a9fe]/a.png"),
    ("nat64-by-dns", "https://nat64.example/a.png"),
    ("nat64-local-use", "https://[64:ff9b:1::a00:1]/a.png"),
    # multicast, broadcast, reserved, documentation and benchmarking ranges
    ("multicast", "https://224.0.0.1/a.png"),
    ("broadcast", "https://255.255.255.255/a.png"),
    ("reserved-240", "https://240.0.0.1/a.png"),
    ("multicast-v6", "https://[ff02::1]/a.png"),
    ("documentation", "https://192.0.2.1/a.png"),
    ("benchmarking", "https://198.18.0.1/a.png"),
    # other spellings of 127.0.0.1 and 169.254.169.254
    ("decimal", "https://2130706433/a.png"),
    ("hex", "https://0x7f000001/a.png"),
    ("octal", "https://017700000001/a.png"),
    ("octal-dotted", "https://0177.0.0.1/a.png"),
    ("short-dotted", "https://127.1/a.png"),
    ("hex-short", "https://0x7f.1/a.png"),
    ("hex-dotted-metadata", "https://0xa9.0xfe.0xa9.0xfe/latest/meta-data/"),
    ("decimal-metadata", "https://2852039166/latest/meta-data/"),
    ("hex-metadata", "https://0xA9FEA9FE/latest/meta-data/"),
    # userinfo and fragment tricks
    ("userinfo", "https://good.example@127.0.0.1/a.png"),
    ("userinfo-port", "https://good.example:443@169.254.169.254/a.png"),
    ("fragment-at", "https://127.0.0.1#@good.example/a.png"),
    ("encoded-at", "https://good.example%40127.0.0.1/a.png"),
    ("backslash-at", "https://127.0.0.1\\@good.example/a.png"),
    # a host with any private address, and schemes other than https
    ("dns-public-and-private", "https://mixed.example/a.png"),
    ("dns-public-and-loopback-v6", "https://mixed6.example/a.png"),
    ("http", "http://cdn.example/a.png"),
    ("file", "file:///etc/passwd"),
    ("gopher", "gopher://127.0.0.1:70/_x"),
    ("ftp", "ftp://cdn.example/a.png"),
]

ALLOWED = [  # public forms that must keep working
    ("public-v4", "https://93.184.216.34/a.png"),
    ("public-v6", "https://[2606:4700:4700::1111]/a.png"),
    ("public-by-dns", "https://cdn.example/a.png"),
    ("public-decimal", "https://134744072/a.png"),
    ("6to4-public", "https://[2002:808:808::]/a.png"),
    ("nat64-public", "https://[64:ff9b::808:808]/a.png"),
    ("mapped-public", "https://[::ffff:8.8.8.8]/a.png"),
]


def strict_fetcher(transport=None) -> ImageFetcher:
    def no_network(request):
        raise AssertionError(f"connected to {request.url}")

    return ImageFetcher(resolver=resolve,
                        transport=transport or httpx.MockTransport(no_network))


@pytest.mark.parametrize("url", [url for _, url in REFUSED], ids=[i for i, _ in REFUSED])
def test_the_vetting_refuses(url):
    with pytest.raises(InvalidInput) as caught:
        strict_fetcher().vet_url(url, FIELD)
    assert caught.value.field == FIELD and caught.value.message.startswith(FIELD + ": ")


@pytest.mark.parametrize("url", [url for _, url in ALLOWED], ids=[i for i, _ in ALLOWED])
def test_the_vetting_allows_public_addresses(url):
    parsed, address = strict_fetcher().vet_url(url, FIELD)
    assert is_public_address(address)


# Redirect targets: every refused https URL, Location as a public host would send it.
REDIRECTED = [(i, url) for i, url in REFUSED
              if not url.startswith(("file:", "gopher:")) and url.isascii()]


@pytest.mark.parametrize("target", [url for _, url in REDIRECTED], ids=[i for i, _ in REDIRECTED])
def test_a_redirect_to_it_is_refused_without_connecting(target):
    seen: list[httpx.Request] = []

    def public_host(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.url.host == PUBLIC_IP, f"connected to {request.url}"
        return httpx.Response(302, headers={"location": target})

    fetcher = strict_fetcher(httpx.MockTransport(public_host))
    with pytest.raises(InvalidInput) as caught:
        fetcher.fetch("https://cdn.example/start.png", FIELD)
    assert caught.value.field == FIELD
    assert len(seen) == 1  # the public hop only


def test_dns_answering_public_then_private_is_pinned_to_the_vetted_answer():
    """DNS rebinding: the name is resolved once per hop and the connection goes to that vetted
    address; a second hop to the same name is resolved (and vetted) again."""
    answers = iter([[PUBLIC_IP], [PUBLIC_IP], ["127.0.0.1"]])
    lookups: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    png = image_bytes(20, 20)
    seen: list[httpx.Request] = []

    def web(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/hop":
            return httpx.Response(302, headers={"location": "/a.png"})
        return httpx.Response(200, content=png)

    fetcher = ImageFetcher(resolver=rebinding, transport=httpx.MockTransport(web))
    assert fetcher.fetch("https://rebind.example/a.png", FIELD).image.data == png
    assert [r.url.host for r in seen] == [PUBLIC_IP] and lookups == ["rebind.example"]
    with pytest.raises(InvalidInput, match="private or reserved"):
        fetcher.fetch("https://rebind.example/hop", FIELD)  # its redirect's lookup: 127.0.0.1
    assert [r.url.host for r in seen] == [PUBLIC_IP, PUBLIC_IP] and len(lookups) == 3


# ---- one end-to-end request per field ---------------------------------------------------------
E2E_TARGETS = ["https://[2002:7f00:1::]/x", "https://[::ffff:169.254.169.254]/x",
               "https://0x7f000001/x", "https://good.example@127.0.0.1/x",
               "https://[64:ff9b::a9fe:a9fe]/x"]


def _aixpose_secret(api) -> str:
    from retouch.serving.core import keys
    from retouch.serving.core.db import transaction

    account_id = api.account(plan="pro", credits=1000)
    with transaction(api.services.session_factory) as session:
        return keys.create_key(session, account_id, surface="aixpose")[1]


def test_each_url_field_refuses_the_table_end_to_end(tmp_path):
    import base64

    with api_for(make_settings(tmp_path), executor=lambda s: InProcessExecutor(s, lambda: None)) \
            as api:
        _, wixma = api.key()
        aixpose = _aixpose_secret(api)
        headers = api.headers(aixpose)
        project_id = api.client.post("/v1/projects", headers=headers,
                                     json={"name": "ssrf"}).json()["id"]
        picture_body = {"source": {"type": "base64", "media_type": "image/png",
                                   "data": base64.b64encode(image_bytes(64, 64)).decode()},
                        "scene_type": "interior", "scene_location": "living_room"}
        picture = api.client.post(f"/v1/projects/{project_id}/pictures", headers=headers,
                                  json=picture_body)
        assert picture.status_code == 201, picture.text
        public_hook = f"https://{PUBLIC_IP}/hook"
        endpoint = api.client.post("/v1/webhooks/endpoints", headers=headers,
                                   json={"url": public_hook})
        assert endpoint.status_code == 201, endpoint.text
        endpoint_url = f"/v1/webhooks/endpoints/{endpoint.json()['id']}"
        for target in E2E_TARGETS:
            image = api.generate(wixma, {"tool": "editor", "input": {"images": [target]}})
            assert_error(image, 400, "invalid_input", FIELD)
            hook = api.client.post(f"/v1/projects/{project_id}/pictures", headers=headers,
                                   json={**picture_body, "webhook_url": target})
            assert_error(hook, 400, "invalid_input", "webhook_url")
            music = api.client.post("/v1/videos", headers=headers, json={
                "project_id": project_id, "picture_ids": [picture.json()["id"]], "duration": 2,
                "music_url": target})
            assert_error(music, 400, "invalid_input", "music_url")
            created = api.client.post("/v1/webhooks/endpoints", headers=headers,
                                      json={"url": target})
            assert_error(created, 400, "invalid_input", "url")
            moved = api.client.patch(endpoint_url, headers=headers, json={"url": target})
            assert_error(moved, 400, "invalid_input", "url")
        assert api.client.get("/api/v1/generations", headers=api.headers(wixma)).json()[
            "data"] == []
        assert api.client.get("/v1/videos", headers=headers).json()["data"] == []
        pictures = api.client.get(f"/v1/projects/{project_id}/pictures", headers=headers).json()
        assert len(pictures["data"]) == 1  # only the one made above
        endpoints = api.client.get("/v1/webhooks/endpoints", headers=headers).json()["data"]
        assert [e["url"] for e in endpoints] == [public_hook]  # none made, none moved
