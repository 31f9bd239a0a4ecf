"""Two servers on one database: their workers have distinct ids, so a job re-leased to the
other server's worker is no longer the first worker's. That worker's heartbeat is refused, it
stops, and it cannot settle the job: the job completes once, is charged once, never refunded.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import io
import threading
import time
from datetime import timedelta

from PIL import Image
from sqlalchemy import select, update

from retouch.pipelines.errors import Cancelled
from retouch.serving.core import accounts, keys
from retouch.serving.core.db import transaction, utcnow
from retouch.serving.core.jobs import create_job, expire_leases, lease_next_job
from retouch.serving.core.storage import LocalStorage
from retouch.serving.core.tables import Account, Generation, LedgerEntry
from retouch.serving.dispatcher import Dispatcher, DispatcherConfig, unique_worker_prefix
from retouch.serving.executor import InProcessExecutor
from retouch.serving.replica_io import Outcome
from retouch.serving.tasks import parse_request


START = 10_000
BODY = {"tool": "generator", "input": {"prompt": "a lamp"}, "options": {"quality": "low"}}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


class StallingBackend:
    """Server A's job: runs until told to stop, and records that it was."""

    def __init__(self):
        self.started = threading.Event()
        self.saw_cancel = threading.Event()

    def run(self, job_id, body, images, seed, progress, is_cancelled):
        self.started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if is_cancelled():
                self.saw_cancel.set()
                raise Cancelled("stopped")
            time.sleep(0.02)
        return Outcome(outputs=[png()])


class WatchingBackend:
    """Server B's job: runs while A still might (up to 5 s) and notes whether A had stopped."""

    def __init__(self, other: StallingBackend):
        self.other = other
        self.other_stopped_first = False

    def run(self, job_id, body, images, seed, progress, is_cancelled):
        self.other_stopped_first = self.other.saw_cancel.wait(5)
        return Outcome(outputs=[png()])


def test_in_process_executors_get_distinct_worker_ids(tmp_path):
    from types import SimpleNamespace

    from retouch.serving.settings import Settings

    services = SimpleNamespace(settings=Settings(home=tmp_path), metrics=None,
                               session_factory=None, storage=None)
    prefixes = set()
    for _ in range(2):
        executor = InProcessExecutor(services, lambda: None, concurrency=0, poll_seconds=60)
        executor.start()
        prefixes.add(executor.dispatcher.worker_prefix)
        executor.stop()
    assert len(prefixes) == 2 and all(p.startswith("inprocess-") for p in prefixes)
    assert unique_worker_prefix() != unique_worker_prefix()


def test_a_re_leased_job_s_old_worker_stops_and_cannot_settle(sf, tmp_path):
    with transaction(sf) as session:
        account = accounts.create_account(session, "two servers", plan="pro", credits=START)
        key, _ = keys.create_key(session, account.id)
    job, _ = create_job(sf, key, parse_request(BODY), BODY)
    storage = LocalStorage(tmp_path / "files", "http://test")
    config = DispatcherConfig(lease_seconds=3.0, max_attempts=2, concurrency=1)
    first = StallingBackend()
    second = WatchingBackend(first)
    server_a = Dispatcher(sf, storage, first, config)  # default ids, as two processes get
    server_b = Dispatcher(sf, storage, second, config)
    worker_a, worker_b = f"{server_a.worker_prefix}-0", f"{server_b.worker_prefix}-0"
    assert worker_a != worker_b

    leased = lease_next_job(sf, worker_a, config.lease_seconds)
    running = threading.Thread(target=server_a.run_job, args=(leased, worker_a))
    running.start()
    assert first.started.wait(5)
    # Server A stalls past its lease (simulated): the sweep re-queues, server B takes it.
    with transaction(sf) as session:
        session.execute(update(Generation).where(Generation.id == job.id)
                        .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert expire_leases(sf, config.max_attempts) == 1
    again = lease_next_job(sf, worker_b, config.lease_seconds)
    assert again is not None and again.id == job.id
    server_b.run_job(again, worker_b)

    running.join(10)
    assert not running.is_alive()
    # A's heartbeat was refused while B ran the job, and A stopped: the job ran once at a time.
    assert second.other_stopped_first
    with sf() as session:
        settled = session.get_one(Generation, job.id)
        ledger = session.scalars(select(LedgerEntry.kind)
                                 .where(LedgerEntry.generation_id == job.id)).all()
        balance = session.get_one(Account, account.id)
    assert settled.status == "completed" and settled.attempts == 2
    assert settled.output_keys == [f"outputs/{job.id}/1.png"]
    assert sorted(ledger) == ["reserve"]
    assert balance.credit_balance == START - settled.cost_credits and balance.active_slots == 0
