"""Job wake-ups: idle dispatchers learn of new jobs, readers of changed jobs, workers of cancels.

`JobSignals` (one per app, `Services.job_signals`) is the in-process hub:
- `job_created()` wakes one idle dispatcher worker (`wait_for_work(seen, timeout)`; `work_seq`
  read before looking for a job closes the gap between an empty lease and the wait);
- `job_changed(job_id)` wakes the `watch(job_id)`es of that job (event streams, completion
  waiters), which then read the row again;
- `report_progress(...)` keeps the live progress of a job running in this process (each
  denoising step) and wakes its watches without a database read;
- `job_cancelled(job_id)` tells the dispatcher running the job to stop it (`on_cancel`).

`core.jobs` records what a transaction did with `note(session, kind, job_id)`. The session
factory's listener (`attach`) publishes the notes to the hub after the transaction commits, and
drops them on rollback, so nobody is woken for a change that did not happen. On PostgreSQL
`note` also sends `pg_notify` inside the same transaction (delivered only at commit); each
process's `PostgresListener` LISTENs and feeds the notes of other processes into its own hub.
Nothing here replaces the database: leases, heartbeats and the rows stay the truth, and every
waiter keeps a slow poll as a safety net.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import bindparam, event, func, select
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

CHANNEL = "retouch_jobs"
NOTE_KINDS = ("created", "changed", "progress", "cancelled")
_SIGNALS_KEY = "retouch_job_signals"
_NOTES_KEY = "retouch_job_notes"


@dataclass(frozen=True)
class LiveProgress:
    """The latest progress of a job running in this process (attempt: the job's `attempts`)."""

    attempt: int
    progress: float
    step: int | None = None
    steps: int | None = None


class JobWatch:
    """One reader's subscription to one job, for a thread (`wait`) or an event loop
    (`wait_async`). `take_row_changed()` says whether the row changed since the last call;
    `take_live()` gives the live progress reports since the last call, in order (at most
    `MAX_QUEUED_LIVE`; a reader that falls behind keeps the newest)."""

    MAX_QUEUED_LIVE = 256

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self._loop = loop
        self._thread_event = threading.Event()
        self._async_event = asyncio.Event() if loop is not None else None
        self._row_changed = True  # a new reader reads the row first
        self._live: deque[LiveProgress] = deque(maxlen=self.MAX_QUEUED_LIVE)

    def wake(self, row_changed: bool, live: LiveProgress | None = None) -> None:
        if row_changed:
            self._row_changed = True
        if live is not None:
            self._live.append(live)
        if self._loop is None:
            self._thread_event.set()
            return
        try:
            self._loop.call_soon_threadsafe(self._async_event.set)
        except RuntimeError:  # the reader's loop is closed: nobody is waiting any more
            pass

    def take_row_changed(self) -> bool:
        changed, self._row_changed = self._row_changed, False
        return changed

    def take_live(self) -> list[LiveProgress]:
        taken = []
        while self._live:
            taken.append(self._live.popleft())
        return taken

    def wait(self, timeout: float) -> bool:
        """Block until woken or `timeout` seconds pass; True when woken."""
        woken = self._thread_event.wait(timeout)
        self._thread_event.clear()
        return woken

    async def wait_async(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._async_event.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        self._async_event.clear()
        return True


class JobSignals:
    def __init__(self):
        self.origin = uuid.uuid4().hex[:12]  # tells this process's own notifications apart
        self._work = threading.Condition()
        self._work_seq = 0
        self._lock = threading.Lock()
        self._watches: dict[str, set[JobWatch]] = {}
        self._live: dict[str, LiveProgress] = {}
        self._cancel_listeners: list[Callable[[str], None]] = []

    # ---- dispatch ---------------------------------------------------------------------------
    @property
    def work_seq(self) -> int:
        return self._work_seq

    def job_created(self) -> None:
        """A job became pending: wake one idle worker."""
        with self._work:
            self._work_seq += 1
            self._work.notify()

    def wake_all_workers(self) -> None:
        """Wake every idle worker (a dispatcher stopping, a listener reconnecting)."""
        with self._work:
            self._work_seq += 1
            self._work.notify_all()

    def wait_for_work(self, seen: int, timeout: float) -> bool:
        """Wait until work arrived after `work_seq` was `seen`, or `timeout`; True when woken."""
        with self._work:
            if self._work_seq != seen:
                return True
            return self._work.wait(timeout) or self._work_seq != seen

    # ---- readers ----------------------------------------------------------------------------
    @contextmanager
    def watch(self, job_id: str, loop: asyncio.AbstractEventLoop | None = None
              ) -> Iterator[JobWatch]:
        """Subscribe to `job_id` for the duration of the block (`loop`: wake an async reader)."""
        watch = JobWatch(loop)
        with self._lock:
            self._watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watches = self._watches.get(job_id)
                if watches is not None:
                    watches.discard(watch)
                    if not watches:
                        del self._watches[job_id]

    def _wake(self, job_id: str, row_changed: bool, live: LiveProgress | None = None) -> None:
        with self._lock:
            watches = list(self._watches.get(job_id, ()))
        for watch in watches:
            watch.wake(row_changed, live)

    def job_changed(self, job_id: str) -> None:
        """The job's row changed (status, progress on another process): readers read it again."""
        self._wake(job_id, True)

    def report_progress(self, job_id: str, live: LiveProgress) -> None:
        """A running job's latest progress in this process; its readers need no database read."""
        self._live[job_id] = live
        self._wake(job_id, False, live)

    def live_progress(self, job_id: str) -> LiveProgress | None:
        return self._live.get(job_id)

    def forget_progress(self, job_id: str) -> None:
        self._live.pop(job_id, None)

    # ---- cancel -----------------------------------------------------------------------------
    def on_cancel(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(job_id)` when a job is cancelled; returns the unsubscribe function."""
        with self._lock:
            self._cancel_listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._cancel_listeners:
                    self._cancel_listeners.remove(listener)

        return unsubscribe

    def job_cancelled(self, job_id: str) -> None:
        with self._lock:
            listeners = list(self._cancel_listeners)
        for listener in listeners:
            try:
                listener(job_id)
            except Exception:  # noqa: BLE001 - one listener must not stop the others
                log.exception("cancel listener failed for job %s", job_id)
        self.job_changed(job_id)

    # ---- notes ------------------------------------------------------------------------------
    def publish(self, kind: str, job_id: str, *, local: bool = True) -> None:
        """Act on one note: `local` notes come from this process's commits (live progress
        already covers their `progress`), others from another process's NOTIFY."""
        if kind == "created":
            self.job_created()
        elif kind == "cancelled":
            self.job_cancelled(job_id)
        elif kind == "changed" or (kind == "progress" and not local):
            self.job_changed(job_id)

    def resync(self) -> None:
        """After missed notifications (a listener reconnected): everyone looks again."""
        self.wake_all_workers()
        with self._lock:
            job_ids = list(self._watches)
        for job_id in job_ids:
            self._wake(job_id, True)


# ---- session plumbing ---------------------------------------------------------------------------
def attach(session_factory: sessionmaker[Session], signals: JobSignals) -> None:
    """Publish the notes of every transaction of `session_factory` to `signals` at commit."""
    info = dict(session_factory.kw.get("info") or {})
    info[_SIGNALS_KEY] = signals
    session_factory.configure(info=info)
    if not event.contains(session_factory, "after_commit", _publish_notes):
        event.listen(session_factory, "after_commit", _publish_notes)
        event.listen(session_factory, "after_rollback", _drop_notes)


def signals_of(session_factory) -> JobSignals | None:
    """The hub `attach` gave this session factory, if any."""
    kw = getattr(session_factory, "kw", None) or {}
    return (kw.get("info") or {}).get(_SIGNALS_KEY)


def note(session: Session, kind: str, job_id: str, *, notified: bool = False) -> None:
    """Record that this transaction did `kind` to `job_id` (published only if it commits). On
    PostgreSQL this also sends the `pg_notify`, unless the caller's statement already carried it
    (`notified`: `notify_statement()` with `notify_payload(...)`)."""
    session.info.setdefault(_NOTES_KEY, []).append((kind, job_id))
    if session.get_bind().dialect.name == "postgresql" and not notified:
        session.connection().execute(_PG_NOTIFY, {"payload": notify_payload(session, kind, job_id)})


def notify_statement():
    """`SELECT pg_notify(<channel>, :payload)`, for a caller to attach CTEs to."""
    return select(func.pg_notify(CHANNEL, bindparam("payload")))


def notify_payload(session: Session, kind: str, job_id: str) -> str:
    signals = session.info.get(_SIGNALS_KEY)
    return f"{signals.origin if signals is not None else '-'} {kind} {job_id}"


_PG_NOTIFY = notify_statement()  # built once


def _publish_notes(session: Session) -> None:
    notes = session.info.pop(_NOTES_KEY, None)
    signals = session.info.get(_SIGNALS_KEY)
    if not notes or signals is None:
        return
    for kind, job_id in notes:
        try:
            signals.publish(kind, job_id)
        except Exception:  # noqa: BLE001 - the commit happened; a wake-up is best effort
            log.exception("publishing %s of job %s failed", kind, job_id)


def _drop_notes(session: Session) -> None:
    session.info.pop(_NOTES_KEY, None)


# ---- PostgreSQL LISTEN ----------------------------------------------------------------------------
def listen_url(database_url: str) -> str:
    """The libpq URL of a SQLAlchemy PostgreSQL URL (driver suffix dropped)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresListener:
    """LISTENs on `CHANNEL` in a thread and feeds other processes' notes into `signals`.

    Reconnects after a lost connection (and then `resync`s, since notes may have been missed)."""

    def __init__(self, database_url: str, signals: JobSignals, *, reconnect_seconds: float = 1.0):
        self.url = listen_url(database_url)
        self.signals = signals
        self.reconnect_seconds = reconnect_seconds
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="job-listener", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self.signals.resync()
                    while not self._stop.is_set():
                        for notification in connection.notifies(timeout=0.5):
                            self.handle(notification.payload)
            except Exception:  # noqa: BLE001 - keep listening; the safety-net polls cover us
                log.warning("job listener: connection lost; reconnecting", exc_info=True)
            finally:
                self.listening.clear()
            self._stop.wait(self.reconnect_seconds)

    def handle(self, payload: str) -> None:
        origin, _, rest = payload.partition(" ")
        kind, _, job_id = rest.partition(" ")
        if origin == self.signals.origin or kind not in NOTE_KINDS or not job_id:
            return  # our own commits were published locally already
        self.signals.publish(kind, job_id, local=False)
