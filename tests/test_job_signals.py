"""Job wake-ups: an idle dispatcher starts a new job within milliseconds although its own poll
is 5 s, completion reaches a waiting reader without polling, notes are published only when
their transaction commits, and on PostgreSQL a dispatcher and a reader on other connections
(their own `JobSignals`, as in another process) are woken by NOTIFY."""

from __future__ import annotations

import os
import statistics
import threading
import time

import pytest

from retouch.serving.app import build_app
from retouch.serving.services import build_services
from retouch.serving.core import jobs
from retouch.serving.core.db import transaction, utcnow
from retouch.serving.core.job_signals import JobSignals, PostgresListener, attach, note
from retouch.serving.core.tables import ApiKey, Generation
from retouch.serving.executor import InProcessExecutor
from retouch.serving.tasks import parse_request

from api_fixtures import GENERATOR_BODY, api_for, image_bytes, make_settings
from db_fixtures import postgres_schema
from live_fixtures import STEP_TIMEOUT_S, GatedRunner, InstantRunner, parse_events

SAFETY_NET_POLL_S = 5.0  # far longer than any start below may take


def started_after_creation(services, job_id) -> float:
    """Seconds from the job's creation (the start of its create transaction) to its lease."""
    with services.session_factory() as session:
        job = session.get(Generation, job_id)
        return (job.started_at - job.created_at).total_seconds()


def wait_terminal(services, job_id, timeout_s=STEP_TIMEOUT_S) -> Generation:
    """Wait for the job's end on the completion push (a watch), not by polling."""
    with services.job_signals.watch(job_id) as watch:
        deadline = time.monotonic() + timeout_s
        while True:
            with services.session_factory() as session:
                job = session.get(Generation, job_id)
            if job.is_terminal:
                return job
            assert time.monotonic() < deadline, f"job {job_id} did not finish"
            watch.wait(timeout_s)


def test_an_idle_dispatcher_starts_a_new_job_within_milliseconds(tmp_path):
    runner = InstantRunner(image_bytes(8, 8))
    settings = make_settings(tmp_path, dispatch_poll_seconds=SAFETY_NET_POLL_S)
    executor = lambda services: InProcessExecutor(services, lambda: runner)  # noqa: E731
    with api_for(settings, executor=executor) as api:
        signals = api.services.job_signals
        committed = []  # when each create's commit announced the job
        announce = signals.job_created
        signals.job_created = lambda: (committed.append(utcnow()), announce())
        _, secret = api.key()
        delays = []
        for _ in range(7):
            time.sleep(0.05)  # the dispatcher's workers are idle, waiting
            job_id = api.generate(secret, GENERATOR_BODY).json()["generation"]["id"]
            assert wait_terminal(api.services, job_id).status == "completed"
            with api.services.session_factory() as session:
                started = session.get(Generation, job_id).started_at
            delays.append((started - committed[-1]).total_seconds())
    # The old idle poll (50 ms) cost 18-23 ms median; a wake-up costs the lease transaction.
    assert statistics.median(delays) < 0.03, delays
    assert max(delays) < 1.0, delays  # never the 5 s safety-net poll


def test_notes_are_published_only_when_their_transaction_commits(tmp_path):
    with api_for(make_settings(tmp_path)) as api:
        signals = api.services.job_signals
        factory = api.services.session_factory
        with signals.watch("job-1") as watch:
            watch.take_row_changed()
            seen = signals.work_seq
            with pytest.raises(RuntimeError):
                with transaction(factory) as session:
                    note(session, "changed", "job-1")
                    note(session, "created", "job-1")
                    raise RuntimeError("rolled back")
            assert not watch.wait(0.05) and not watch.take_row_changed()
            assert signals.work_seq == seen
            with transaction(factory) as session:
                note(session, "changed", "job-1")
                note(session, "created", "job-1")
            assert watch.wait(1.0) and watch.take_row_changed()
            assert signals.work_seq == seen + 1


def test_heartbeats_store_the_step_reached_for_other_readers(tmp_path):
    with api_for(make_settings(tmp_path)) as api:
        _, secret = api.key()
        job_id = api.generate(secret, GENERATOR_BODY).json()["generation"]["id"]
        factory = api.services.session_factory
        assert jobs.lease_next_job(factory, "w", 30).id == job_id
        assert jobs.heartbeat(factory, job_id, "w", 0.5, 30, step=2, steps=4)
        with factory() as session:
            job = session.get(Generation, job_id)
            assert (job.progress, job.step, job.steps) == (0.5, 2, 4)
        assert not jobs.heartbeat(factory, job_id, "other worker", 0.9, 30, step=3, steps=4)


# ---- PostgreSQL: NOTIFY between processes ---------------------------------------------------------
needs_postgres = pytest.mark.skipif(not os.environ.get("RETOUCH_TEST_POSTGRES_URL"),
                                    reason="RETOUCH_TEST_POSTGRES_URL is not set")


class OtherProcess:
    """What another `retouch serve` process holds: its own services (engine, session factory,
    `JobSignals`), a NOTIFY listener and a dispatcher, on the same database."""

    def __init__(self, settings, runner):
        self.services = build_services(settings, migrate=False)
        self.listener = PostgresListener(settings.resolved_database_url,
                                         self.services.job_signals)
        self.executor = InProcessExecutor(self.services, lambda: runner)

    def __enter__(self):
        self.listener.start()
        assert self.listener.listening.wait(10), "the listener did not connect"
        self.executor.start()
        return self

    def __exit__(self, *exc):
        self.executor.stop()
        self.listener.stop()
        self.services.engine.dispose()


@needs_postgres
def test_a_dispatcher_in_another_process_is_woken_by_notify(tmp_path):
    with postgres_schema("signals") as url:
        api_settings = make_settings(tmp_path / "api", database_url=url,
                                     events_poll_seconds=30.0)  # only NOTIFY can wake readers
        worker_settings = make_settings(tmp_path / "worker", database_url=url,
                                        dispatch_poll_seconds=SAFETY_NET_POLL_S)
        with api_for(api_settings) as api, \
                OtherProcess(worker_settings, InstantRunner(image_bytes(8, 8))) as worker:
            assert api.services.job_signals is not worker.services.job_signals
            _, secret = api.key()
            for _ in range(3):
                time.sleep(0.05)
                started = time.monotonic()
                job_id = api.generate(secret, GENERATOR_BODY).json()["generation"]["id"]
                response = api.client.get(f"/api/v1/generations/{job_id}/events",
                                          headers=api.headers(secret))
                elapsed = time.monotonic() - started
                events, _ = parse_events(response.text)
                assert events[-1].data["generation"]["status"] == "completed"
                assert elapsed < 3.0, elapsed  # the worker's poll is 5 s, the reader's 30 s
                assert started_after_creation(api.services, job_id) < 1.0


@needs_postgres
def test_a_cancel_reaches_the_job_running_in_another_process(tmp_path, tiny_store):
    runner = GatedRunner(tiny_store)
    with postgres_schema("cancel") as url:
        settings = make_settings(tmp_path, database_url=url,
                                 dispatch_poll_seconds=SAFETY_NET_POLL_S)
        api_services = build_services(settings)
        app = build_app(settings, services=api_services)  # no executor of its own
        try:
            with OtherProcess(settings, runner) as worker:
                from fastapi.testclient import TestClient

                with TestClient(app) as client:
                    from api_fixtures import Api

                    api = Api(client, api_services)
                    _, secret = api.key()
                    job_id = api.generate(secret, GENERATOR_BODY).json()["generation"]["id"]
                    assert runner.at_first_step.wait(STEP_TIMEOUT_S)
                    tracker = worker.executor.dispatcher._trackers[job_id]
                    response = client.post(f"/api/v1/generations/{job_id}/cancel",
                                           headers=api.headers(secret))
                    assert response.status_code == 200, response.text
                    # NOTIFY, not the next heartbeat (which would mark the lease lost instead).
                    assert tracker.cancelled.wait(2.0)
                    runner.release.set()
                    assert runner.finished.wait(STEP_TIMEOUT_S)
                    assert runner.steps == [(1, runner.steps[0][1])]
        finally:
            api_services.engine.dispose()


def test_the_listener_ignores_its_own_and_malformed_notifications():
    signals = JobSignals()
    listener = PostgresListener("postgresql://localhost/none", signals)
    seen = signals.work_seq
    listener.handle(f"{signals.origin} created job-1")  # published locally already
    listener.handle("other-origin bogus job-1")
    listener.handle("garbage")
    assert signals.work_seq == seen
    woken = threading.Event()
    signals.on_cancel(lambda job_id: woken.set() if job_id == "job-2" else None)
    listener.handle("other-origin created job-2")
    listener.handle("other-origin cancelled job-2")
    assert signals.work_seq == seen + 1 and woken.is_set()


def test_attach_is_idempotent_per_session_factory(tmp_path):
    with api_for(make_settings(tmp_path)) as api:
        factory, signals = api.services.session_factory, api.services.job_signals
        attach(factory, signals)  # a second attach must not publish twice
        key_id, secret = api.key()
        with factory() as session:
            key = session.get(ApiKey, key_id)
        seen = signals.work_seq
        jobs.create_job(factory, key, parse_request(GENERATOR_BODY), GENERATOR_BODY)
        assert signals.work_seq == seen + 1
