"""The Ray runtime of the worker: tiny models, local Ray + Serve deployments and the dispatcher.

`start_backend(settings)` builds the execution backend the settings name (Ray deployments or an
in-process `TaskRunner`) and returns it with a `close()`; tests and benchmarks reuse it.
`RayExecutor` is the app's executor for `executor = "ray"` (`make_executor(services)`). The
foreground `retouch serve` that wraps the HTTP app around it is `serving.server`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console


def ensure_models(settings, console: Console | None = None) -> None:
    """Build the tiny twins once (idempotent); production profiles load from their sources."""
    if settings.profile != "tiny":
        return
    from retouch.models.tiny import build_tiny_models, tiny_cache_is_current

    cache = settings.resolved_model_cache
    if tiny_cache_is_current(cache):
        return
    if console is not None:
        with console.status(f"building tiny models in {cache}"):
            build_tiny_models(cache)
    else:
        build_tiny_models(cache)


def ray_temp_dir(home: Path) -> str:
    """A short per-home temp dir: Ray's socket paths must stay under the 107-byte limit."""
    digest = hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:8]
    return os.path.join(tempfile.gettempdir(), f"rt-{digest}")


def start_ray(settings, object_store_bytes: int = 256 * 1024 * 1024) -> None:
    """Connect to `settings.ray_address`, or start the embedded single-node Ray."""
    import ray

    from .deployments import RAY_NAMESPACE

    if ray.is_initialized():
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=RAY_NAMESPACE, log_to_driver=False)
        return
    # The embedded default is a private single-node cluster: no token auth, no dashboard.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(namespace=RAY_NAMESPACE, include_dashboard=False, log_to_driver=False,
             object_store_memory=object_store_bytes, _temp_dir=ray_temp_dir(settings.home),
             configure_logging=False)


def stop_ray() -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def check_local_resources(options) -> None:
    """Fail fast when the embedded single-node Ray cannot place the configured replicas
    (Serve would otherwise wait for GPUs that never come)."""
    import ray

    available = ray.cluster_resources()
    for resource, key in (("GPU", "num_gpus"), ("CPU", "num_cpus")):
        needed = sum(getattr(o, key) * o.num_replicas for o in options.values())
        if needed > available.get(resource, 0):
            raise RuntimeError(f"the serve config needs {needed:g} {resource}s for its replicas; "
                               f"this node has {available.get(resource, 0):g}")


@dataclass
class Backend:
    """An execution backend plus what it takes to stop it."""

    backend: Any
    close: Callable[[], None] = field(default=lambda: None)
    families: Any = None


def start_backend(settings, console: Console | None = None, metrics=None) -> Backend:
    """The backend `settings.executor` names: Ray Serve deployments or an in-process runner."""
    from .dispatcher import InProcessBackend, RayBackend
    from .executor import runner_config

    ensure_models(settings, console)
    config = runner_config(settings)
    if settings.executor == "inprocess":
        return Backend(InProcessBackend(config.build_runner(), metrics=metrics,
                                        max_batch_size=config.max_batch_size,
                                        batch_wait_timeout_s=config.batch_wait_timeout_s))
    from .deployments import deploy_families, load_family_options

    options = load_family_options(settings.serve_config)
    start_ray(settings)
    try:
        if not settings.ray_address:
            check_local_resources(options)
        families = deploy_families(config, options)
    except BaseException:
        stop_ray()
        raise
    return Backend(RayBackend(families, metrics=metrics), close=stop_ray, families=families)


class RayExecutor:
    """The app's executor for `executor = "ray"`: Serve deployments + the dispatcher.

    `start()` brings up Ray and the deployments (the slow part of `retouch serve`), then the
    dispatcher; `stop()` stops the dispatcher, then Serve and Ray.
    """

    def __init__(self, services, console: Console | None = None):
        self.services = services
        self.console = console
        self.backend: Backend | None = None
        self.dispatcher = None

    def start(self) -> None:
        from .dispatcher import DispatcherConfig, make_dispatcher

        self.backend = start_backend(self.services.settings, self.console,
                                     metrics=self.services.metrics)
        self.dispatcher = make_dispatcher(self.services, self.backend.backend,
                                          DispatcherConfig.from_settings(self.services.settings))
        self.dispatcher.start()

    def stop(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def available(self) -> bool:
        return self.dispatcher is not None


def make_executor(services, console: Console | None = None) -> RayExecutor:
    return RayExecutor(services, console)
