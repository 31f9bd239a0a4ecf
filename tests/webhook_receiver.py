"""A loopback webhook receiver for tests: records every POST and answers scripted statuses."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    statuses: list[int]  # answered in order; the last one repeats
    delay_s: float = 0.0  # how long each answer takes
    received: list[Received] = field(default_factory=list)

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} webhook posts, got {len(self.received)}")
            time.sleep(0.02)
        return self.received


@contextmanager
def webhook_receiver(statuses: list[int] | None = None, delay_s: float = 0.0):
    receiver = Receiver(url="", statuses=list(statuses or [200]), delay_s=delay_s)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            n = len(receiver.received)
            status = receiver.statuses[min(n, len(receiver.statuses) - 1)]
            # Recorded before answering, so a sender that got its answer finds it recorded.
            receiver.received.append(Received(self.path, dict(self.headers.items()), body))
            time.sleep(receiver.delay_s)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/aixpose"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
