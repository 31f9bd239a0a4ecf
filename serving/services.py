"""`Services`: what the app, its surfaces and its workers share (settings, database, storage,
fetcher, rate limiter, executor, metrics, job signals), and `build_services(settings)` that
makes them.

The app keeps them on `app.state.services`; route dependencies reach them through
`serving.deps.ServicesDep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .core.db import make_engine, make_session_factory, run_migrations
from .core.errors import ServiceUnavailable
from .core.fetch import ImageFetcher, make_fetcher
from .core.job_signals import JobSignals, attach, signals_of
from .core.ratelimit import RateLimiter, make_rate_limiter
from .core.storage import Storage, make_storage
from .metrics import Metrics
from .settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: Any  # the SQLAlchemy engine
    session_factory: Any
    storage: Storage
    fetcher: ImageFetcher
    rate_limiter: RateLimiter
    executor: Any = None  # a `serving.executor.JobExecutor`, or None: jobs stay pending
    metrics: Metrics | None = None
    # Wake-ups of dispatchers and event streams (`core.job_signals`), attached to the session
    # factory so every committed job change is published.
    job_signals: JobSignals | None = None

    def __post_init__(self) -> None:
        if self.job_signals is None:
            self.job_signals = signals_of(self.session_factory) or JobSignals()
        attach(self.session_factory, self.job_signals)

    def require_executor(self) -> None:
        """Refuse new jobs while a configured executor reports itself unavailable."""
        if self.executor is not None and not self.executor.available():
            raise ServiceUnavailable("The image service is temporarily unavailable; try again "
                                     "later.")


def build_services(settings: Settings, *, executor: Any = None,
                   migrate: bool = True) -> Services:
    """Database (migrated to head), storage, fetcher and rate limiter for `settings`."""
    url = settings.resolved_database_url
    if migrate:
        run_migrations(url)
    engine = make_engine(url)
    session_factory = make_session_factory(engine)
    return Services(settings=settings, engine=engine, session_factory=session_factory,
                    storage=make_storage(settings), fetcher=make_fetcher(settings),
                    rate_limiter=make_rate_limiter(settings), executor=executor,
                    metrics=Metrics(session_factory))
