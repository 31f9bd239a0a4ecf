"""SSRF-safe fetching: private targets and redirects refused, loopback allowed only on request."""

from __future__ import annotations

import httpx
import pytest

from retouch.serving.core.errors import InvalidInput
from retouch.serving.core.fetch import ImageFetcher, is_public_address

from api_fixtures import api_for, assert_error, image_bytes, make_settings, serve_routes

FIELD = "input.images[0]"
PUBLIC_IP = "93.184.216.34"


def rejects(fetcher: ImageFetcher, url: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        fetcher.fetch(url, FIELD)
    assert caught.value.field == FIELD
    assert caught.value.message.startswith(FIELD + ":")
    assert fragment in caught.value.message, caught.value.message


def test_address_classification():
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                    "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fc00::1",
                    "::ffff:127.0.0.1", "240.0.0.1"):
        assert not is_public_address(address), address
    for address in (PUBLIC_IP, "8.8.8.8", "2606:4700:4700::1111"):
        assert is_public_address(address), address


def test_private_and_metadata_targets_are_refused_without_connecting():
    def no_network(request):
        raise AssertionError(f"connected to {request.url}")

    fetcher = ImageFetcher(transport=httpx.MockTransport(no_network),
                           resolver=lambda host, port: ["10.0.0.7"])
    rejects(fetcher, "https://127.0.0.1/a.png", "private or reserved")
    rejects(fetcher, "https://10.0.0.5/a.png", "private or reserved")
    rejects(fetcher, "https://169.254.169.254/latest/meta-data/", "private or reserved")
    rejects(fetcher, "https://[::1]/a.png", "private or reserved")
    rejects(fetcher, "https://intranet.example/a.png", "private or reserved")  # DNS → 10.x
    rejects(fetcher, "http://images.example/a.png", "https://")
    rejects(fetcher, "ftp://images.example/a.png", "https://")
    rejects(fetcher, "https://user:pw@images.example/a.png", "credentials")


def test_a_host_with_any_private_address_is_refused():
    fetcher = ImageFetcher(transport=httpx.MockTransport(lambda r: httpx.Response(200)),
                           resolver=lambda host, port: [PUBLIC_IP, "127.0.0.1"])
    rejects(fetcher, "https://mixed.example/a.png", "private or reserved")


def public_web(routes: dict[str, httpx.Response], seen: list[httpx.Request]):
    """A fake public internet: every name resolves to PUBLIC_IP, routed by the Host header."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return routes.get(f"{request.headers['host']}{request.url.path}", httpx.Response(404))

    resolver = {"cdn.example": [PUBLIC_IP], "hop.example": [PUBLIC_IP],
                "internal.example": ["10.0.0.9"]}
    return ImageFetcher(transport=httpx.MockTransport(handler),
                        resolver=lambda host, port: resolver[host])


def test_the_connection_is_pinned_to_the_vetted_address():
    png = image_bytes(20, 18)
    seen: list[httpx.Request] = []
    fetcher = public_web({"cdn.example/a.png": httpx.Response(200, content=png)}, seen)
    fetched = fetcher.fetch("https://cdn.example/a.png", FIELD)
    assert fetched.image.data == png and (fetched.image.width, fetched.image.height) == (20, 18)
    assert seen[0].url.host == PUBLIC_IP
    assert seen[0].headers["host"] == "cdn.example"
    assert seen[0].extensions["sni_hostname"] == "cdn.example"


def test_redirects_are_rechecked_and_capped():
    png = image_bytes()
    routes = {
        "cdn.example/to-private": httpx.Response(302, headers={
            "location": "https://internal.example/secret.png"}),
        "cdn.example/to-metadata": httpx.Response(301, headers={
            "location": "https://169.254.169.254/latest/meta-data/"}),
        "cdn.example/one-hop": httpx.Response(307, headers={"location": "/a.png"}),
        "cdn.example/a.png": httpx.Response(200, content=png),
        "cdn.example/loop": httpx.Response(302, headers={"location": "/loop"}),
    }
    seen: list[httpx.Request] = []
    fetcher = public_web(routes, seen)
    rejects(fetcher, "https://cdn.example/to-private", "private or reserved")
    rejects(fetcher, "https://cdn.example/to-metadata", "private or reserved")
    assert all(r.url.host == PUBLIC_IP for r in seen)  # never connected to the private hop
    assert fetcher.fetch("https://cdn.example/one-hop", FIELD).final_url == \
        "https://cdn.example/a.png"
    seen.clear()
    rejects(fetcher, "https://cdn.example/loop", "more than 3")
    assert len(seen) == 4  # the first request + 3 redirects


def test_size_cap_content_check_and_http_errors():
    big = image_bytes(64, 64)
    routes = {
        "cdn.example/declared": httpx.Response(200, headers={"content-length": "999999"},
                                               content=b"x" * 10),
        "cdn.example/streamed": httpx.Response(200, content=big),
        "cdn.example/text": httpx.Response(200, content=b"<html>not an image</html>"),
        "cdn.example/gone": httpx.Response(410),
    }
    fetcher = public_web(routes, [])
    fetcher.max_bytes = len(big) - 1
    rejects(fetcher, "https://cdn.example/declared", "larger than")
    rejects(fetcher, "https://cdn.example/streamed", "larger than")
    rejects(fetcher, "https://cdn.example/text", "PNG, JPEG or WEBP")
    rejects(fetcher, "https://cdn.example/gone", "HTTP 410")


def test_loopback_is_fetched_only_when_private_urls_are_allowed():
    png = image_bytes(30, 20)
    routes = {"/a.png": (200, {"Content-Type": "image/png"}, png),
              "/hop": (302, {"Location": "/a.png"}, b"")}
    with serve_routes(routes) as base:
        rejects(ImageFetcher(), f"{base}/a.png", "https://")
        rejects(ImageFetcher(), base.replace("http://", "https://") + "/a.png",
                "private or reserved")
        allowed = ImageFetcher(allow_private_urls=True)
        fetched = allowed.fetch(f"{base}/hop", FIELD)
        assert fetched.image.data == png and fetched.final_url == f"{base}/a.png"
    rejects(ImageFetcher(allow_private_urls=True, timeout_s=2), f"{base}/a.png", "unreachable")


def test_url_references_through_the_api(tmp_path):
    png = image_bytes(28, 28, color=(9, 99, 199))
    with serve_routes({"/p.png": (200, {}, png)}) as base:
        with api_for(make_settings(tmp_path / "strict")) as api:
            _, secret = api.key()
            for url in ("https://127.0.0.1/p.png", "https://10.0.0.1/p.png",
                        "https://169.254.169.254/latest/meta-data/", f"{base}/p.png"):
                body = {"tool": "editor", "input": {"images": [{"url": url}]}}
                assert_error(api.generate(secret, body), 400, "invalid_input", field=FIELD)
        with api_for(make_settings(tmp_path / "open", allow_private_urls=True)) as api:
            _, secret = api.key()
            body = {"tool": "upscaler", "input": {"image": f"{base}/p.png"}}
            first = api.generate(secret, body, **{"Idempotency-Key": "up-1"})
            assert first.status_code == 201, first.text
            stored_url = first.json()["generation"]["input_image"]
            assert stored_url.startswith("http://testserver/files/uploads/")
            assert api.client.get(stored_url.removeprefix("http://testserver")).content == png
            # A retry fetches the same bytes again and replays the same job.
            replay = api.generate(secret, body, **{"Idempotency-Key": "up-1"})
            assert replay.status_code == 200
            assert replay.json()["generation"]["id"] == first.json()["generation"]["id"]
            missing = {"tool": "upscaler", "input": {"image": f"{base}/missing.png"}}
            assert_error(api.generate(secret, missing), 400, "invalid_input",
                         field="input.image")
