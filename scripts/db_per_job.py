"""What the database sees for one job: statements and row locks of create, lease, heartbeat and
settle, counted with SQLAlchemy cursor events on the app's own engine.

    python -m retouch.scripts.db_per_job [--database-url postgresql+psycopg://...] [--jobs 20]

The create goes through `POST /api/v1/generations` (auth, validation, pricing, the reservation
transaction); the lease, one heartbeat and the completion are the dispatcher's `core.jobs`
calls. Row locks are the rows each phase writes (INSERT/UPDATE/DELETE row counts: PostgreSQL
holds a row lock on each until commit) plus the rows a `SELECT ... FOR UPDATE` returns. A
`WITH` statement (PostgreSQL's create: data-modifying CTEs) counts once under `statements` and
`WITH`, each of its CTEs under its own verb, and one locked row per CTE (each of ours writes
one row).
Figures are per job, averaged over `--jobs` jobs after a warm-up job. A second figure is what
an idle dispatcher costs: statements per second per worker thread while nothing is pending
(each thread polls for a job every `poll_seconds` and sweeps expired leases every second).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

PHASES = ("create", "lease", "heartbeat", "settle")
VERBS = ("SELECT", "INSERT", "UPDATE", "DELETE")


class StatementCounter:
    """Counts statements by verb, transactions, and rows locked, for the current phase."""

    def __init__(self, engine):
        from sqlalchemy import event

        self.phase: str | None = None
        self.counts: dict[str, Counter] = {p: Counter() for p in PHASES}
        event.listen(engine, "after_cursor_execute", self._after_execute)
        event.listen(engine, "commit", self._on_commit)

    @contextmanager
    def counting(self, phase: str):
        self.phase = phase
        try:
            yield
        finally:
            self.phase = None

    def _after_execute(self, conn, cursor, statement, parameters, context, executemany):
        if self.phase is None:
            return
        counts = self.counts[self.phase]
        text = statement.lstrip().upper()
        counts["statements"] += 1
        if text.startswith("WITH"):
            counts["WITH"] += 1
            for verb in re.findall(r"\bAS\s*\(\s*(INSERT|UPDATE|DELETE)\b", text):
                counts[verb] += 1
                counts["rows locked"] += 1
            return
        verb = next((v for v in VERBS if text.startswith(v)), "OTHER")
        if text.startswith("BEGIN"):
            verb = "BEGIN"
        counts[verb] += 1
        rows = cursor.rowcount if cursor.rowcount and cursor.rowcount > 0 else 0
        if verb in ("INSERT", "UPDATE", "DELETE"):
            counts["rows locked"] += rows
        elif verb == "SELECT" and re.search(r"\bFOR UPDATE\b", text):
            counts["rows locked"] += rows
            counts["SELECT FOR UPDATE"] += 1

    def _on_commit(self, conn):
        if self.phase is not None:
            self.counts[self.phase]["transactions"] += 1


def measure(database_url: str | None, jobs: int, home: Path) -> dict[str, Counter]:
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from retouch.serving.app import build_app, build_services
    from retouch.serving.core import accounts, jobs as job_store, keys
    from retouch.serving.core.db import transaction
    from retouch.serving.core.tables import Generation
    from retouch.serving.settings import Settings

    settings = Settings(home=home, database_url=database_url, executor="inprocess")
    services = build_services(settings)
    with services.session_factory() as session:  # the lease must find this script's jobs
        if session.scalar(select(func.count()).select_from(Generation)
                          .where(Generation.status == "pending")):
            raise SystemExit("the database has pending jobs: give an empty one")
    with transaction(services.session_factory) as session:
        account = accounts.create_account(session, "db-per-job", plan="pro", credits=10**9)
        _, secret = keys.create_key(session, account.id)
    counter = StatementCounter(services.engine)
    app = build_app(settings, services=services)
    body = {"tool": "generator", "input": {"prompt": "a product shot"},
            "options": {"quality": "low"}}
    headers = {"Authorization": f"Bearer {secret}"}
    with TestClient(app) as client:
        for n in range(jobs + 1):
            counting = counter.counting if n else _not_counting  # job 0 warms caches up
            with counting("create"):
                response = client.post("/api/v1/generations", json=body, headers=headers)
                assert response.status_code == 201, response.text
            with counting("lease"):
                job = job_store.lease_next_job(services.session_factory, "worker", 30)
            with counting("heartbeat"):
                assert job_store.heartbeat(services.session_factory, job.id, "worker", 0.5, 30)
            with counting("settle"):
                assert job_store.complete_job(services.session_factory, job.id, "worker",
                                              [f"outputs/{job.id}/1.png"])
    services.engine.dispose()
    return counter.counts


def idle_dispatcher_rate(database_url: str | None, home: Path, seconds: float,
                         threads: int = 2) -> float:
    """Statements per second per worker thread of a dispatcher with nothing to do."""
    import time

    from retouch.serving.app import build_services
    from retouch.serving.dispatcher import Dispatcher, DispatcherConfig
    from retouch.serving.settings import Settings

    settings = Settings(home=home, database_url=database_url, executor="inprocess")
    services = build_services(settings)
    counter = StatementCounter(services.engine)
    dispatcher = Dispatcher(services.session_factory, services.storage, backend=None,
                            config=DispatcherConfig(concurrency=threads))
    with counter.counting("lease"):
        dispatcher.start()
        time.sleep(seconds)
        dispatcher.stop()
    services.engine.dispose()
    return counter.counts["lease"]["statements"] / seconds / threads


@contextmanager
def _not_counting(phase: str):
    yield


def print_table(counts: dict[str, Counter], jobs: int, backend: str) -> None:
    columns = ["statements", "BEGIN", "SELECT", "SELECT FOR UPDATE", "WITH", "INSERT", "UPDATE",
               "DELETE", "transactions", "rows locked"]
    print(f"{backend}, per job (mean of {jobs}):")
    print("| phase | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    total = Counter()
    for phase in PHASES:
        total.update(counts[phase])
        print(f"| {phase} | " + " | ".join(f"{counts[phase][c] / jobs:g}" for c in columns) + " |")
    print("| **one job** | " + " | ".join(f"{total[c] / jobs:g}" for c in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="retouch-db-per-job-") as home:
        counts = measure(args.database_url, args.jobs, Path(home))
        idle = idle_dispatcher_rate(args.database_url, Path(home), args.idle_seconds)
    backend = "PostgreSQL" if args.database_url and "postgres" in args.database_url else "SQLite"
    print_table(counts, args.jobs, backend)
    print(f"idle dispatcher: {idle:.1f} statements/s per worker thread")


if __name__ == "__main__":
    main()
