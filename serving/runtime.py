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
    """Shut Serve down, then Ray (the embedded single-node default)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def disconnect_ray() -> None:
    """Leave a shared Ray cluster, its Serve applications running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def check_local_resources(serve_config) -> None:
    """Fail fast when the embedded single-node Ray cannot place the configured replicas
    (Serve would otherwise wait for GPUs, or a GPU type, that never come)."""
    import ray

    from .serve_config import startup_resources

    available = ray.cluster_resources()
    for resource, needed in startup_resources(serve_config).items():
        have = available.get(resource, 0)
        if needed > have + 1e-9:
            what = (f"a {resource.split(':', 1)[1]} GPU" if resource.startswith("accelerator_type:")
                    else f"{needed:g} {resource}s")
            raise RuntimeError(f"the serve config needs {what} for its replicas; "
                               f"this node has {have:g}")


@dataclass
class Backend:
    """An execution backend plus what it takes to stop it."""

    backend: Any
    close: Callable[[], None] = field(default=lambda: None)
    families: Any = None
    in_flight_capacity: int | None = None  # jobs the Serve replicas hold at their largest scale


def deploy_families(serve_config, *, detached_board: bool = False):
    """Deploy a Serve config, wait until its applications run, and connect to them."""
    from .deployments import connect_families, deploy_serve_config, wait_until_running
    from .serve_config import application_names

    names = application_names(serve_config)
    deploy_serve_config(serve_config)
    wait_until_running(list(names.values()))
    return connect_families(names, detached_board=detached_board)


def start_backend(settings, console: Console | None = None, metrics=None) -> Backend:
    """The backend `settings.executor` names: Ray Serve applications or an in-process runner.

    On Ray, the Serve config (`settings.serve_config`, else one CPU replica per family) is
    deployed unless `settings.deploy_serve_apps` is off (a KubeRay RayService deploys the same
    file); either way the dispatcher finds each family's application by name.
    """
    from .dispatcher import InProcessBackend, RayBackend
    from .executor import runner_config

    ensure_models(settings, console)
    config = runner_config(settings)
    if settings.executor == "inprocess":
        return Backend(InProcessBackend(config.build_runner(), metrics=metrics,
                                        max_batch_size=config.max_batch_size,
                                        batch_wait_timeout_s=config.batch_wait_timeout_s))
    from .deployments import connect_families
    from .serve_config import application_names, in_flight_capacity, load_serve_config

    serve_config = load_serve_config(settings.serve_config, config.model_dump(exclude_none=True))
    embedded = not settings.ray_address
    if embedded:
        from ray.serve.config import ProxyLocation

        # The node's HTTP port belongs to the API: applications are reached by handle only.
        serve_config = serve_config.model_copy(update={"proxy_location": ProxyLocation.Disabled})
    start_ray(settings)
    # Embedded, Serve dies with this process; on a shared cluster it belongs to the cluster.
    close = stop_ray if embedded else disconnect_ray
    try:
        if not settings.deploy_serve_apps:
            families = connect_families(application_names(serve_config), detached_board=True)
        else:
            if embedded:
                check_local_resources(serve_config)
            families = deploy_families(serve_config, detached_board=not embedded)
    except BaseException:
        close()
        raise
    return Backend(RayBackend(families, metrics=metrics), close=close, families=families,
                   in_flight_capacity=in_flight_capacity(serve_config))


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

        settings = self.services.settings
        self.backend = start_backend(settings, self.console, metrics=self.services.metrics)
        config = DispatcherConfig.from_settings(settings)
        if "dispatcher_concurrency" not in settings.model_fields_set \
                and self.backend.in_flight_capacity:
            # Enough jobs in flight that Serve's autoscaler sees the real queue depth.
            config.concurrency = max(config.concurrency, self.backend.in_flight_capacity)
        self.dispatcher = make_dispatcher(self.services, self.backend.backend, config)
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
