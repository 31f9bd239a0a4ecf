"""The fetch deadline is one per URL, across its redirects and the whole body, and a request's
URLs are fetched at the same time: a slow loopback server (redirect hops that each take a while,
a body trickled byte by byte, a connection that never answers) cannot hold a fetch, or a create
call with 16 references, past one deadline."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from retouch.serving.core.errors import InvalidInput
from retouch.serving.core.fetch import ImageFetcher

from api_fixtures import api_for, assert_error, image_bytes, make_settings

PNG = image_bytes(24, 24)
FIELD = "input.images[0]"


@contextmanager
def slow_server(hop_delay_s: float = 0.6, trickle_s: float = 0.2):
    """/hop/N redirects to /hop/N-1 after `hop_delay_s` (/hop/0 is the image); /trickle sends
    one byte every `trickle_s`; /silent never answers; /slow/<n>.png answers after
    `hop_delay_s`."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            if self.path.startswith("/hop/"):
                left = int(self.path.rsplit("/", 1)[1])
                stop.wait(hop_delay_s)
                if left > 0:
                    self.send_response(302)
                    self.send_header("Location", f"/hop/{left - 1}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._image()
            elif self.path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                for byte in PNG:
                    if stop.wait(trickle_s):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            elif self.path == "/silent":
                stop.wait(60)
            else:  # /slow/<n>.png
                stop.wait(hop_delay_s)
                self._image()

        def _image(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 64  # 16 references connect at once

        def handle_error(self, request, client_address):
            pass  # the fetcher hanging up on a slow answer is the point

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def timed_refusal(fetcher: ImageFetcher, url: str) -> tuple[float, str]:
    started = time.monotonic()
    with pytest.raises(InvalidInput) as caught:
        fetcher.fetch(url, FIELD)
    assert caught.value.field == FIELD
    return time.monotonic() - started, caught.value.message


@pytest.mark.parametrize("path", ["/hop/3", "/trickle", "/silent"])
def test_one_deadline_covers_every_hop_and_the_whole_body(path):
    deadline = 1.0
    with slow_server() as base:
        fetcher = ImageFetcher(allow_private_urls=True, timeout_s=deadline)
        elapsed, message = timed_refusal(fetcher, base + path)
    # Per-read timeouts would allow 4 hops x 0.6 s, or one read per 0.2 s for ~20 s.
    assert elapsed < deadline + 0.5, elapsed
    assert "timed out" in message


def test_a_slow_but_timely_chain_is_fetched():
    with slow_server(hop_delay_s=0.2) as base:
        fetched = ImageFetcher(allow_private_urls=True, timeout_s=5).fetch(f"{base}/hop/3", FIELD)
    assert fetched.image.data == PNG and fetched.final_url == f"{base}/hop/0"


def test_a_create_with_16_references_waits_one_deadline_not_16(tmp_path):
    with slow_server(hop_delay_s=0.5) as base, api_for(make_settings(
            tmp_path, allow_private_urls=True, fetch_timeout_seconds=1.5)) as api:
        _, secret = api.key()
        slow = [f"{base}/slow/{n}.png" for n in range(16)]
        started = time.monotonic()
        created = api.generate(secret, {"tool": "editor", "input": {"images": slow}})
        elapsed = time.monotonic() - started
        assert created.status_code == 201, created.text
        assert elapsed < 4.0, elapsed  # one after another would take 16 x 0.5 s

        silent = [f"{base}/silent"] * 16
        started = time.monotonic()
        refused = api.generate(secret, {"tool": "editor", "input": {"images": silent}})
        elapsed = time.monotonic() - started
        assert_error(refused, 400, "invalid_input", FIELD)
        assert elapsed < 1.5 + 1.5, elapsed  # not 16 x 1.5 s
        assert api.client.get("/api/v1/credits", headers=api.headers(secret)).json()[
            "credits"]["queue"]["active"] == 1  # only the first job holds a slot
