"""A real `retouch serve` in a subprocess for the end-to-end tests: a free loopback port, the
operator CLI with `--json`, and a server that is up (GET /healthz answers 200) before the test
starts and is stopped with SIGTERM after it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

RETOUCH = str(Path(sys.executable).parent / "retouch")
READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_json(home: Path, *args: str) -> dict:
    """Run `retouch <args> --home <home> --json` and return its parsed output."""
    done = subprocess.run([RETOUCH, *args, "--home", str(home), "--json"], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@dataclass
class ServeProcess:
    process: subprocess.Popen
    port: int
    log: Path
    ready_seconds: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def retouch_serve(home: Path, *serve_args: str, env: dict[str, str]) -> Iterator[ServeProcess]:
    """`retouch serve --home <home> --port <free> <serve_args>` with `env` added to the
    environment, its output in `home/serve.log`; yields once /healthz answers 200."""
    port = free_port()
    log = home / "serve.log"
    started = time.monotonic()
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [RETOUCH, "serve", "--home", str(home), "--port", str(port), *serve_args],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **env},
            start_new_session=True)
    serve = ServeProcess(process, port, log)
    try:
        with httpx.Client(base_url=serve.base_url, timeout=2) as http:
            while True:
                assert process.poll() is None, f"retouch serve exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() - started < READY_TIMEOUT_S, \
                    f"not ready:\n{log.read_text()[-3000:]}"
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        serve.ready_seconds = time.monotonic() - started
        yield serve
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
