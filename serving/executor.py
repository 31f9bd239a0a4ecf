"""How the app gets jobs done: the executor protocol and the in-process executor.

The app only needs `start()`, `stop()` and `available()` from an executor: it starts it with the
app, stops it at shutdown, and refuses new jobs with `service_unavailable` while `available()` is
false. The Ray runtime provides one executor; `InProcessExecutor` runs the same dispatcher on an
`TaskRunner` in this process (tests, `settings.executor == "inprocess"`). With no executor at all
(`services.executor = None`) jobs simply stay `pending`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class JobExecutor(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def available(self) -> bool: ...


class InProcessExecutor:
    """The dispatcher loop in background threads, calling a `TaskRunner` directly.

    `runner_factory()` builds the runner lazily on start (e.g. `TaskRunner(ModelStore("tiny"))`).
    The dispatcher is woken by the app's job signals; `poll_seconds` (default: the settings'
    `dispatch_poll_seconds`) is its safety-net poll. A batch holds at most `concurrency` jobs:
    more can never be in flight, so a batch never waits for company that cannot come.
    """

    def __init__(self, services, runner_factory: Callable[[], Any], *, concurrency: int = 1,
                 poll_seconds: float | None = None):
        self.services = services
        self.runner_factory = runner_factory
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.dispatcher = None

    def start(self) -> None:
        from .dispatcher import Dispatcher, DispatcherConfig, InProcessBackend, unique_worker_prefix

        settings = self.services.settings
        poll_seconds = (settings.dispatch_poll_seconds if self.poll_seconds is None
                        else self.poll_seconds)
        config = DispatcherConfig(lease_seconds=settings.lease_seconds,
                                  max_attempts=settings.max_attempts,
                                  concurrency=self.concurrency, poll_seconds=poll_seconds,
                                  deadlines_s=dict(settings.job_deadlines_s),
                                  drain_seconds=settings.drain_seconds,
                                  fault_exit_at=settings.fault_exit_at)
        metrics = self.services.metrics
        backend = InProcessBackend(self.runner_factory(), metrics=metrics,
                                   max_batch_size=min(settings.max_batch_size,
                                                      max(1, self.concurrency)),
                                   batch_wait_timeout_s=settings.batch_wait_timeout_s)
        self.dispatcher = Dispatcher(self.services.session_factory, self.services.storage,
                                     backend, config,
                                     worker_prefix=unique_worker_prefix("inprocess"),
                                     metrics=metrics,
                                     signals=getattr(self.services, "job_signals", None))
        self.dispatcher.start()

    def stop(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None

    def available(self) -> bool:
        return self.dispatcher is not None


def runner_config(settings):
    """What a `TaskRunner` is built from for these settings (profile, device, model cache)."""
    from .deployments import EngineConfig

    return EngineConfig(profile=settings.profile, device=settings.device,
                        cache_dir=str(settings.resolved_model_cache),
                        overrides=dict(settings.model_overrides),
                        # No batch waits for more jobs than the dispatcher keeps in flight.
                        max_batch_size=min(settings.max_batch_size,
                                           max(1, settings.dispatcher_concurrency)),
                        batch_wait_timeout_s=settings.batch_wait_timeout_s,
                        fault_oom_calls=tuple(settings.fault_oom_calls),
                        fault_oom_seeds=tuple(settings.fault_oom_seeds),
                        fault_step_delay_s=settings.fault_step_delay_s)


def runner_factory_for(settings) -> Callable[[], Any]:
    """A `TaskRunner` factory for the configured model profile (tiny by default)."""
    return lambda: runner_config(settings).build_runner()
