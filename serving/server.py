"""`retouch serve`: the whole worker in the foreground (models, Ray Serve deployments, the
dispatcher and the HTTP API) until Ctrl-C / SIGTERM, then it drains (no new connections, running
jobs get `drain_seconds` to finish, the rest go back to `pending`), Serve and Ray shut down and
it exits 0. The Ray pieces are `serving.runtime`'s; the HTTP app is `serving.app`'s.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import NoReturn

import uvicorn
from rich.console import Console

from .app import build_app, make_default_executor
from .runtime import ensure_models, make_executor, start_ray
from .services import build_services


def serve_forever(settings) -> NoReturn:
    """Run the worker in the foreground until Ctrl-C / SIGTERM, then leave the process with its
    exit code. Everything is settled and committed by then; a job thread still inside torch
    (drained while loading models) would abort the interpreter's shutdown (SIGABRT), so the
    process exits at once instead of returning."""
    code = _run(settings)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(settings) -> int:
    started = time.perf_counter()
    console = Console(stderr=True)
    # Plain log lines on stderr, configured before anything else does: the MCP SDK would
    # install rich's traceback rendering, whose slow formatting under its handler lock stalled
    # every thread (the event loop too) while a database outage logged one error per call.
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.home.mkdir(parents=True, exist_ok=True)
    ensure_models(settings, console)
    with console.status("preparing the database" if settings.migrate_on_start
                        else "opening the database"):
        services = build_services(settings, migrate=settings.migrate_on_start)
    if settings.executor == "ray":
        # Ray first: its ray.init installs a SIGTERM handler, and uvicorn's (installed when the
        # server runs) must replace it so SIGTERM shuts down cleanly through the app's lifespan.
        with console.status("starting Ray"):
            start_ray(settings)
        services.executor = make_executor(services, console)
        console.print("starting Ray Serve deployments …")
    else:
        services.executor = make_default_executor(services)
    app = build_app(settings, services=services)
    # SIGTERM drains: uvicorn stops accepting and gives open requests (event streams too) up
    # to `drain_seconds`; then the app's lifespan stops the executor, whose dispatcher lets
    # running jobs finish for up to `drain_seconds` and requeues the rest.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=settings.drain_seconds)
    server = uvicorn.Server(config)

    def announce_when_ready() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            console.print(f"retouch ready at http://{settings.host}:{settings.port} "
                          f"(profile {settings.profile}, {settings.device}, executor "
                          f"{settings.executor}; {time.perf_counter() - started:.1f} s)")

    logging.getLogger("ray").setLevel(logging.WARNING)
    # uvicorn handles SIGINT/SIGTERM while it runs and re-raises the signal afterwards to the
    # handler found before it: make that a no-op so a clean shutdown ends with exit code 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    threading.Thread(target=announce_when_ready, name="ready-announcer", daemon=True).start()
    server.run()  # handles SIGINT/SIGTERM; the app's lifespan stops the executor
    if not server.started:
        console.print("retouch did not start (see the error above)")
        return 1
    console.print("retouch stopped")
    return 0
