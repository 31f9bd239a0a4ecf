"""The dispatcher: leases pending jobs, runs them on an executor backend, settles them.

`Dispatcher(...)` owns `settings.dispatcher_concurrency` worker threads. Each worker loops:
expire stale leases, lease the next pending job, load its input images from storage, run it on
the backend (`RayBackend`: the Serve deployment of the tool's family; `InProcessBackend`: a
`TaskRunner` in this process), heartbeat with progress while it runs, store the outputs under
`outputs/<job_id>/<n>.<ext>` and complete the job — or fail it (`invalid_input` for bad inputs,
`service_unavailable` otherwise; `core.jobs` refunds). When a Ray replica dies mid-job the
dispatcher stops heartbeating and leaves the job alone: its lease expires and `expire_leases`
retries it, or fails it with a refund once attempts run out. A job is never stuck in processing.

Outputs or inputs that storage cannot write or read (a full disk, an S3 endpoint past its
timeouts) fail the job `storage_unavailable`, refunded. A worker whose settle fails because the
database went away lives on; the job's lease expires and it is retried. `stop()` drains: no new
leases, running jobs get `drain_seconds` to finish, the rest go back to `pending`.

With the app's `JobSignals` (`signals=`), an idle worker sleeps until a job is created (in this
process, or in another one through PostgreSQL NOTIFY) instead of polling; `poll_seconds` is then
only a safety net. A running job's progress (each denoising step) is published to the signals for
event streams, and a cancel of one of its jobs stops it at once; without signals, its next
heartbeat finds the lease gone and stops it.

`Dispatcher.run_job(job)` is the one implementation of "run one leased job".
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from retouch.pipelines.errors import Cancelled

from .core.errors import InvalidInput
from .replica_io import Job, OutOfMemory, Outcome
from .tasks import TASKS, job_request

log = logging.getLogger(__name__)

OUT_OF_MEMORY = "out_of_memory"  # a job's error_code when its replica ran out of memory
DEADLINE_EXCEEDED = "deadline_exceeded"  # ... when it ran past its tool's deadline
STORAGE_UNAVAILABLE = "storage_unavailable"  # ... when its inputs or outputs could not be
# read or written (a full or unwritable disk, an object store that does not answer)
FAULT_EXIT_CODE = 70  # the exit status of a process killed by `fault_exit_at`
ProgressFn = Callable[[float], None]
CancelledFn = Callable[[], bool]


class ReplicaLost(Exception):
    """The worker running a job went away; the job's lease will expire and it is retried."""


class ReplicaError(Exception):
    """An unexpected failure inside a replica; `kind` is its exception type's name."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


class ExecutionBackend(Protocol):
    """Runs one job. `progress(fraction)` takes its progress; when the sink also has
    `report_step(step, steps)` (the dispatcher's `JobTracker`), the backend reports denoising
    steps there too."""

    def run(self, job_id: str, request, images: dict[str, bytes], seed: int,
            progress: ProgressFn, is_cancelled: CancelledFn) -> Outcome:
        """The job's `Outcome` (outputs and the model revisions used); raises its error."""


def step_sink(progress) -> Callable[[int, int], None] | None:
    """The `report_step` of a progress sink that takes denoising steps, else None."""
    return getattr(progress, "report_step", None)


class InProcessBackend:
    """Runs jobs on a `TaskRunner` in this process (tests, the `inprocess` executor); jobs that
    arrive together with one batch key share a denoising batch (`batching.JobBatcher`)."""

    def __init__(self, runner, *, max_batch_size: int = 1, batch_wait_timeout_s: float = 0.0,
                 metrics=None):
        from .batching import JobBatcher

        self.runner = runner
        self.metrics = metrics
        self.batcher = JobBatcher(runner, max_batch_size=max_batch_size,
                                  batch_wait_timeout_s=batch_wait_timeout_s,
                                  wait_only_for_expected=True)

    def expecting(self):
        """This thread may run a job inside the block (a lease attempt and its run): a batch
        forming meanwhile waits for it (`JobBatcher.expecting`)."""
        return self.batcher.expecting()

    def run(self, job_id, request, images, seed, progress, is_cancelled) -> Outcome:
        outcome = self.batcher.run_outcome(Job(request, images, seed, progress, is_cancelled,
                                               step_sink(progress)))
        if self.metrics is not None:
            observe_run(self.metrics, request.tool, outcome.batch_size, outcome.step_seconds)
        outcome.result()  # raises the job's error
        return outcome


def observe_run(metrics, tool: str, batch_size: int, step_seconds: list[float]) -> None:
    """One job's pipeline figures: the size of the batch it ran in, the time of each step."""
    metrics.batch_size.observe(batch_size)
    step_time = metrics.step_time.labels(tool)
    for seconds in step_seconds:
        step_time.observe(seconds)


class RayBackend:
    """Runs jobs on the Serve deployment of the tool's family; progress via the board actor."""

    def __init__(self, families, poll_seconds: float = 0.25, metrics=None):
        self.families = families
        self.poll_seconds = poll_seconds
        self.metrics = metrics

    def run(self, job_id, request, images, seed, progress, is_cancelled) -> Outcome:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        board = self.families.board
        response = self.families.handle_for(request).run_job.remote(job_id, request, images,
                                                                     seed)
        cancel_sent = False
        try:
            while True:
                try:
                    reply = response.result(timeout_s=self.poll_seconds)
                except TimeoutError:
                    pass
                else:
                    if self.metrics is not None:
                        observe_run(self.metrics, request.tool, reply.get("batch_size", 1),
                                    reply.get("step_seconds", []))
                    return _outputs_or_raise(reply)
                fraction, step, steps = ray.get(board.state.remote(job_id))
                report_step = step_sink(progress)
                if report_step is not None and step is not None:
                    report_step(step, steps)
                progress(fraction)
                if is_cancelled() and not cancel_sent:
                    board.cancel.remote(job_id)
                    cancel_sent = True
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            raise ReplicaLost(f"the replica running job {job_id} died: {exc}") from exc
        finally:
            board.forget.remote(job_id)


def _outputs_or_raise(reply: dict[str, Any]) -> Outcome:
    """Turn a deployment's reply back into an outcome, or raise the pipeline error it reported."""
    from .core.errors import ServiceUnavailable

    if "outputs" in reply:
        return Outcome(outputs=reply["outputs"], batch_size=reply.get("batch_size", 1),
                       model_revisions=reply.get("model_revisions", {}))
    error = reply["error"]
    if error.get("unexpected"):
        raise ReplicaError(error["message"])
    if error.get("out_of_memory"):
        raise OutOfMemory(error["message"])
    if error.get("cancelled"):
        raise Cancelled(error["message"])
    if error["code"] == "invalid_input":
        raise InvalidInput(error.get("field") or "", error["message"].removeprefix(
            f"{error.get('field')}: " if error.get("field") else ""))
    raise ServiceUnavailable(error["message"])


class JobTracker:
    """Latest progress of a running job (fraction, denoising step of how many) and whether it
    must stop: lease lost, dispatcher stopping, or cancelled by its owner. Callable as the
    job's progress sink; with `signals`, every report is published as the job's live progress.
    """

    def __init__(self, job_id: str = "", attempt: int = 0, signals=None,
                 deadline_s: float | None = None):
        self.job_id, self.attempt, self.signals = job_id, attempt, signals
        self.progress = 0.0
        self.step: int | None = None
        self.steps: int | None = None
        self.lease_lost = threading.Event()
        self.stopping = threading.Event()
        self.cancelled = threading.Event()
        self.deadline_s = deadline_s
        self.worker_id = ""  # the dispatcher worker holding the job's lease
        self._deadline = time.monotonic() + deadline_s if deadline_s else None

    def report(self, fraction: float) -> None:
        self.progress = max(self.progress, min(1.0, float(fraction)))
        if self.signals is not None:
            from .core.job_signals import LiveProgress

            self.signals.report_progress(self.job_id, LiveProgress(
                self.attempt, self.progress, self.step, self.steps))

    __call__ = report

    def report_step(self, step: int, steps: int) -> None:
        """The denoising step reached (1-based) of the current call's `steps`; published with
        the next progress report."""
        self.step, self.steps = int(step), int(steps)

    @property
    def past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def is_cancelled(self) -> bool:
        return (self.lease_lost.is_set() or self.stopping.is_set()
                or self.cancelled.is_set() or self.past_deadline)


@dataclass
class DispatcherConfig:
    lease_seconds: float = 30.0
    max_attempts: int = 2
    concurrency: int = 2
    # How often an idle worker looks for a pending job: with job signals only a safety net
    # (they wake it when a job is created), without them the dispatch latency.
    poll_seconds: float = 0.05
    expire_every_seconds: float = 1.0  # how often a worker sweeps expired leases
    deadlines_s: dict[str, float] = field(default_factory=dict)  # per tool; "*" for the rest
    # `stop()` lets running jobs finish for this long, then requeues the rest (`pending`).
    drain_seconds: float = 0.0
    fault_exit_at: str = ""  # tests: die at this point of the first settle (see settings)

    @classmethod
    def from_settings(cls, settings) -> "DispatcherConfig":
        return cls(lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
                   concurrency=settings.dispatcher_concurrency,
                   deadlines_s=dict(settings.job_deadlines_s),
                   poll_seconds=settings.dispatch_poll_seconds,
                   drain_seconds=settings.drain_seconds, fault_exit_at=settings.fault_exit_at)

    def deadline_for(self, tool: str) -> float | None:
        return self.deadlines_s.get(tool, self.deadlines_s.get("*"))


def unique_worker_prefix(label: str | None = None) -> str:
    """`[label-]host-pid-random`: leases name their worker, so two processes on one database
    (or one process restarted with the same pid) must never share a worker id."""
    parts = [label] if label else []
    return "-".join([*parts, socket.gethostname(), str(os.getpid()), secrets.token_hex(4)])


class Dispatcher:
    """`worker_prefix` names this dispatcher's workers (`<prefix>-0`, ...); the default is
    unique per process and per dispatcher."""

    def __init__(self, session_factory, storage, backend: ExecutionBackend,
                 config: DispatcherConfig, worker_prefix: str | None = None, metrics=None,
                 signals=None):
        self.session_factory = session_factory
        self.storage = storage
        self.backend = backend
        self.config = config
        self.metrics = metrics
        self.signals = signals  # a `core.job_signals.JobSignals`, or None: poll
        self.worker_prefix = worker_prefix or unique_worker_prefix()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._trackers: dict[str, JobTracker] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._last_sweep = float("-inf")

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        if self.signals is not None and self._unsubscribe is None:
            self._unsubscribe = self.signals.on_cancel(self._cancel_running)
        for i in range(max(1, self.config.concurrency)):
            thread = threading.Thread(target=self._worker_loop, args=(f"{self.worker_prefix}-{i}",),
                                      name=f"dispatcher-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Drain: stop leasing, let running jobs finish for up to `config.drain_seconds`, then
        stop the rest and put them back to `pending` (lease cleared, the attempt not counted),
        so another or a restarted server runs them. Nothing is left `processing`."""
        from .core.jobs import requeue_job

        self._stop.set()
        if self.signals is not None:
            self.signals.wake_all_workers()
        drain_until = time.monotonic() + max(0.0, self.config.drain_seconds)
        for thread in self._threads:
            thread.join(max(0.0, drain_until - time.monotonic()))
        for tracker in list(self._trackers.values()):
            tracker.stopping.set()  # run_job requeues it once its backend call returns
        for thread in self._threads:
            thread.join(timeout)
        for tracker in list(self._trackers.values()):  # a backend that did not stop in time
            self._requeue(requeue_job, tracker)
        self._threads.clear()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _requeue(self, requeue_job, tracker: JobTracker) -> None:
        try:
            if requeue_job(self.session_factory, tracker.job_id, tracker.worker_id):
                log.info("job %s put back to pending (server stopping)", tracker.job_id)
        except Exception:
            log.exception("requeueing job %s failed; its lease will expire", tracker.job_id)

    def _cancel_running(self, job_id: str) -> None:
        """A job was cancelled: if it runs here, stop it at its next denoising step."""
        tracker = self._trackers.get(job_id)
        if tracker is not None:
            tracker.cancelled.set()

    def _worker_loop(self, worker_id: str) -> None:
        from .core.jobs import lease_next_job

        while not self._stop.is_set():
            seen = self.signals.work_seq if self.signals is not None else 0
            with self._expecting():  # from the lease attempt until the job reaches the backend
                try:
                    # A new job is leased first; expired leases are swept between jobs.
                    job = lease_next_job(self.session_factory, worker_id,
                                         self.config.lease_seconds)
                except Exception:
                    log.exception("dispatcher: leasing failed")
                    job = None
                if job is not None:
                    try:
                        self.run_job(job, worker_id)
                    except Exception:
                        # The database went away while settling: the worker lives on, and the
                        # job's lease expires and it is retried (or failed and refunded) once
                        # it is back.
                        log.exception("dispatcher: settling job %s failed", job.id)
            if job is None:
                try:
                    if self._sweep_if_due():
                        continue  # re-queued jobs: look again at once
                except Exception:
                    log.exception("dispatcher: sweeping expired leases failed")
                if self.signals is not None:
                    self.signals.wait_for_work(seen, self.config.poll_seconds)
                else:
                    self._stop.wait(self.config.poll_seconds)
                continue
            try:
                self._sweep_if_due()
            except Exception:
                log.exception("dispatcher: sweeping expired leases failed")

    def _expecting(self):
        """A backend batching in this process (`InProcessBackend`) holds a forming batch for
        a job on its way; other backends need no notice."""
        expecting = getattr(self.backend, "expecting", None)
        return expecting() if expecting is not None else nullcontext()

    def _sweep_if_due(self) -> bool:
        """Expire stale leases at most every `expire_every_seconds` (across this dispatcher's
        workers); True when jobs moved."""
        from .core.jobs import expire_leases

        if time.monotonic() - self._last_sweep < self.config.expire_every_seconds:
            return False
        self._last_sweep = time.monotonic()
        return expire_leases(self.session_factory, self.config.max_attempts) > 0

    # ---- one job ------------------------------------------------------------------------------
    def run_job(self, job, worker_id: str) -> None:
        """Run one leased job to a settled state (or leave it to lease expiry if the worker died)."""
        from .core.jobs import complete_job, fail_job

        from .core.jobs import requeue_job
        from .core.storage import StorageUnavailable

        tracker = JobTracker(job.id, int(job.attempts or 0), self.signals,
                             deadline_s=self.config.deadline_for(job.tool))
        tracker.worker_id = worker_id
        self._trackers[job.id] = tracker
        heartbeat = threading.Thread(target=self._heartbeat_loop, args=(job.id, worker_id, tracker),
                                     name=f"heartbeat-{job.id[:8]}", daemon=True)
        heartbeat.start()
        try:
            request = job_request(job)
            images = TASKS.for_request(request).load_inputs(self.session_factory, self.storage,
                                                             job, request)
            outcome = self.backend.run(job.id, request, images, int(job.seed),
                                       tracker, tracker.is_cancelled)
            if tracker.cancelled.is_set():
                raise Cancelled("the job was cancelled")
            keys = self.store_outputs(job, outcome.outputs)
            self._fault_point("outputs_stored")
            complete_job(self._settle_sessions(), job.id, worker_id, keys,
                         model_revisions=outcome.model_revisions or None)
        except ReplicaLost as exc:
            log.warning("%s; leaving job %s to lease expiry", exc, job.id)
        except Cancelled:
            if tracker.cancelled.is_set():
                log.info("job %s stopped: cancelled by its owner (already settled)", job.id)
            elif tracker.past_deadline:
                fail_job(self.session_factory, job.id, worker_id, DEADLINE_EXCEEDED,
                         f"the job ran longer than its {tracker.deadline_s:g} s deadline; it "
                         "was stopped and refunded")
            elif tracker.lease_lost.is_set():
                log.info("job %s stopped; its lease decides what happens next", job.id)
            elif tracker.stopping.is_set():
                self._requeue(requeue_job, tracker)
            else:
                fail_job(self.session_factory, job.id, worker_id, "service_unavailable",
                         "the job was cancelled")
        except InvalidInput as exc:
            fail_job(self.session_factory, job.id, worker_id, "invalid_input", exc.message)
        except StorageUnavailable as exc:
            log.warning("job %s: %s", job.id, exc.message)
            fail_job(self.session_factory, job.id, worker_id, STORAGE_UNAVAILABLE,
                     f"{exc.message}; the job was refunded, try again later")
        except OutOfMemory:
            fail_job(self.session_factory, job.id, worker_id, OUT_OF_MEMORY,
                     "the GPU ran out of memory running this job; it was refunded, try a "
                     "smaller size or again later")
        except Exception as exc:
            log.exception("job %s failed", job.id)
            kind = exc.kind if isinstance(exc, ReplicaError) else type(exc).__name__
            fail_job(self.session_factory, job.id, worker_id, "service_unavailable",
                     f"the image service failed: {kind}")
        finally:
            tracker.stopping.set()
            heartbeat.join()
            self._trackers.pop(job.id, None)
            if self.signals is not None:
                self.signals.forget_progress(job.id)
            self._observe_latency(job)

    def _fault_point(self, point: str) -> None:
        """Fault injection (tests): die here, as a crash or `kill -9` would."""
        if self.config.fault_exit_at == point:
            log.warning("fault injection: exiting at %s", point)
            logging.shutdown()
            os._exit(FAULT_EXIT_CODE)

    def _settle_sessions(self):
        """The session factory for settling; with the `settle_commit` fault, its sessions die
        inside the transaction, after its statements ran and before it commits."""
        if self.config.fault_exit_at != "settle_commit":
            return self.session_factory
        from sqlalchemy import event

        def factory():
            session = self.session_factory()
            event.listen(session, "before_commit", lambda _s: self._fault_point("settle_commit"))
            return session

        return factory

    def _observe_latency(self, job) -> None:
        from .core.db import utcnow

        if self.metrics is None or job.created_at is None:
            return
        created = job.created_at
        now = utcnow() if created.tzinfo is not None else utcnow().replace(tzinfo=None)
        self.metrics.job_latency.labels(job.tool).observe((now - created).total_seconds())

    def _heartbeat_loop(self, job_id: str, worker_id: str, tracker: JobTracker) -> None:
        from .core.jobs import heartbeat

        # Often enough that the API shows live progress, and well inside the lease.
        interval = min(0.5, self.config.lease_seconds / 3)
        while not tracker.stopping.wait(interval):
            try:
                alive = heartbeat(self.session_factory, job_id, worker_id, tracker.progress,
                                  self.config.lease_seconds, step=tracker.step,
                                  steps=tracker.steps)
            except Exception:
                log.exception("heartbeat for job %s failed", job_id)
                continue
            if not alive:
                tracker.lease_lost.set()
                return

    def store_outputs(self, job, outputs: list[bytes]) -> list[str]:
        from .core.storage import MEDIA_TYPES, account_key

        output_format = (job.request.get("options") or {}).get("output_format", "png")
        keys = []
        for n, data in enumerate(outputs, start=1):
            key = account_key(self.storage, job.account_id,
                              f"outputs/{job.id}/{n}.{output_format}")
            self.storage.put(key, data, MEDIA_TYPES[output_format])
            keys.append(key)
        return keys


def make_dispatcher(services, backend: ExecutionBackend, config: DispatcherConfig) -> Dispatcher:
    """A dispatcher over the app's services (session factory, storage, metrics)."""
    return Dispatcher(services.session_factory, services.storage, backend, config,
                      metrics=getattr(services, "metrics", None),
                      signals=getattr(services, "job_signals", None))
