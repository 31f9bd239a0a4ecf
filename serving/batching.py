"""Dynamic batching without Ray: jobs arriving together with one batch key share a batch.

`JobBatcher(runner, max_batch_size, batch_wait_timeout_s).run(job)` is called by many dispatcher
threads at once. One worker thread takes the oldest waiting job, waits up to
`batch_wait_timeout_s` from that job's arrival for more jobs with the same key
(`TaskSpec.batch_key`; `None` never waits), and runs up to `max_batch_size` of them through
`TaskRunner.run_jobs`. With `wait_only_for_expected`, it waits only while a job announced with
`expecting()` has not arrived: the dispatcher announces each lease attempt, so a lone job starts
at once, jobs leased together share a batch, and jobs that arrive while a batch runs are collected
for the next one anyway. Batches run one at a time: the models are shared. With
`max_batch_size=1` nothing is collected: each job runs in its caller's thread, one at a time, with
no hand-over to the worker. On Ray, Serve's `@serve.batch` does the collecting (`deployments`);
the grouping by key is the runner's either way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from .replica_io import Job, Outcome

if TYPE_CHECKING:
    from .runner import TaskRunner


def adopt_torch_threads() -> None:
    """Give the calling thread the process's torch CPU thread count. OpenMP and MKL keep their
    thread count per OS thread, so a thread started to run pipelines would otherwise use every
    core after `torch.set_num_threads(n)` in the main thread (and fight the others for them)."""
    import torch

    torch.set_num_threads(torch.get_num_threads())


@dataclass
class _Waiting:
    job: Job
    key: Hashable
    arrived: float
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None


def batch_groups(runner: TaskRunner, jobs: list) -> list[list[int]]:
    """Indexes of `jobs` grouped by batch key, in arrival order (`None` keys stay alone)."""
    groups: dict[Hashable, list[int]] = {}
    for i, job in enumerate(jobs):
        key = runner.registry.for_request(job.request).batch_key(job.request)
        groups.setdefault(("alone", i) if key is None else ("key", key), []).append(i)
    return list(groups.values())


class JobBatcher:
    def __init__(self, runner: TaskRunner, *, max_batch_size: int = 1,
                 batch_wait_timeout_s: float = 0.0,
                 on_batch: Callable[[int], None] | None = None,
                 wait_only_for_expected: bool = False):
        self.runner = runner
        self.max_batch_size = max(1, max_batch_size)
        self.wait_s = max(0.0, batch_wait_timeout_s)
        self.on_batch = on_batch  # called with each batch's size (metrics)
        self.wait_only_for_expected = wait_only_for_expected
        self._expected = 0  # jobs announced by `expecting()` that have not arrived yet
        self._expecting = threading.local()
        self._waiting: list[_Waiting] = []
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._alone = threading.Lock()  # one job at a time when nothing is batched
        self._threads_adopted = threading.local()

    @contextmanager
    def expecting(self):
        """The calling thread may hand a job to `run_outcome` inside this block (the
        dispatcher: from its lease attempt to the run); a batch forming meanwhile waits for it,
        up to `batch_wait_timeout_s`, until it arrives or the block ends without it."""
        with self._cond:
            self._expected += 1
        self._expecting.pending = True
        try:
            yield
        finally:
            with self._cond:
                self._count_arrival()
                self._cond.notify_all()

    def _count_arrival(self) -> None:
        """The calling thread's announced job is here, or will not come (under `_cond`)."""
        if getattr(self._expecting, "pending", False):
            self._expecting.pending = False
            self._expected -= 1

    def run(self, job: Job) -> list[bytes]:
        """Run `job` (alone or in a batch); its outputs, or its error raised."""
        return self.run_outcome(job).result()

    def run_outcome(self, job: Job) -> Outcome:
        """Run `job` (alone or in a batch) and say what became of it."""
        if self.max_batch_size == 1:
            with self._cond:
                self._count_arrival()
            return self._run_alone(job)
        spec = self.runner.registry.for_request(job.request)
        key = spec.batch_key(job.request) if self.max_batch_size > 1 else None
        waiting = _Waiting(job, ("alone", id(job)) if key is None else ("key", key),
                           time.monotonic())
        with self._cond:
            self._waiting.append(waiting)
            self._count_arrival()
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="job-batcher",
                                                daemon=True)
                self._worker.start()
            self._cond.notify_all()
        waiting.done.wait()
        return waiting.outcome

    def _run_alone(self, job: Job) -> Outcome:
        if not getattr(self._threads_adopted, "done", False):
            adopt_torch_threads()
            self._threads_adopted.done = True
        with self._alone:
            try:
                outcome = self.runner.run_jobs([job])[0]
            except Exception as exc:  # noqa: BLE001 - the caller decides what it means
                outcome = Outcome(error=exc)
        if self.on_batch is not None:
            self.on_batch(1)
        return outcome

    def _next_batch(self) -> list[_Waiting]:
        with self._cond:
            while not self._waiting:
                if not self._cond.wait(timeout=30.0) and not self._waiting:
                    return []  # idle: the worker ends, the next job starts a new one
            first = self._waiting[0]
            deadline = first.arrived + (self.wait_s if first.key[0] == "key" else 0.0)
            while True:
                batch = [w for w in self._waiting if w.key == first.key][:self.max_batch_size]
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch_size or remaining <= 0 or (
                        self.wait_only_for_expected and self._expected == 0):
                    break
                self._cond.wait(timeout=remaining)
            for waiting in batch:
                self._waiting.remove(waiting)
            return batch

    def _work(self) -> None:
        adopt_torch_threads()
        while True:
            batch = self._next_batch()
            if not batch:
                with self._cond:
                    if not self._waiting:
                        self._worker = None
                        return
                continue
            try:
                outcomes = self.runner.run_jobs([w.job for w in batch])
            except Exception as exc:  # noqa: BLE001 - never leave a caller waiting
                outcomes = [Outcome(error=exc) for _ in batch]
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for waiting, outcome in zip(batch, outcomes):
                waiting.outcome = outcome
                waiting.done.set()
