"""`TaskRunner(store)`: runs any registered task on one replica's models.

`run(request, inputs, ctx)` takes decoded inputs (PIL images keyed by `request.image_fields()`)
and returns the pipeline's outputs; `run_job(request, raw_inputs, seed, progress, is_cancelled)`
is "run one job": the stored input bytes are decoded once here, the outputs encoded in the
request's output format. `run_jobs(jobs)` runs jobs that share a batch key (`TaskSpec.batch_key`)
as one denoising batch where the task has a `run_batch`; each job gets its own outcome, and a job
that fails (bad input found late, out of memory) fails alone: when the batch itself raises, every
job is run again on its own. The Ray deployments, the in-process executor, the batch runner and
the benchmarks share it. A pipeline's `PipelineInputError` leaves as `InvalidInput` naming the same
field; `Cancelled` passes through. On CPU the same seed and inputs give the same bytes.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from retouch.pipelines.common import RunContext
from retouch.pipelines.errors import Cancelled, PipelineInputError

from .core.errors import InvalidInput, RetouchError, invalid_input_from, pipeline_input_errors
from .replica_io import Job, OutOfMemory, Outcome
from .tasks import TASKS, TaskRegistry


class _StepTimer:
    """Wraps a job's progress sink and keeps the time between its successive reports."""

    def __init__(self, progress: Callable[[float], None]):
        self.progress, self.last, self.intervals = progress, None, []

    def __call__(self, fraction: float) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.intervals.append(now - self.last)
        self.last = now
        self.progress(fraction)


def _context(seed: int, progress, is_cancelled, on_step, step_delay_s: float = 0.0) -> RunContext:
    if step_delay_s:  # fault injection: every progress report (each denoising step) is slow
        report = progress

        def progress(fraction: float) -> None:
            time.sleep(step_delay_s)
            report(fraction)
    ctx = RunContext(seed=seed, progress=progress, is_cancelled=is_cancelled)
    if on_step is not None:
        ctx.on_step = on_step
    return ctx


class TaskRunner:
    """`fault_oom_calls`: pipeline calls (1-based) that raise a CUDA out-of-memory error, to test
    that one bad job fails alone; `fault_oom_seeds`: jobs run with one of these seeds raise it on
    every replica, however often they are tried (a replica restarted by Serve counts its calls
    from 1 again); `fault_step_delay_s`: a pause at every progress report, to
    test what happens to a long job (settings, off by default)."""

    MAX_CONSECUTIVE_FAILURES = 3  # then `healthy()` is False and Serve restarts the replica

    def __init__(self, store, registry: TaskRegistry = TASKS, *,
                 fault_oom_calls: tuple[int, ...] = (), fault_oom_seeds: tuple[int, ...] = (),
                 fault_step_delay_s: float = 0.0):
        self.store = store
        self.registry = registry
        self.fault_oom_calls = frozenset(fault_oom_calls)
        self.fault_oom_seeds = frozenset(fault_oom_seeds)
        self.fault_step_delay_s = fault_step_delay_s
        self.pipeline_calls = 0
        self.consecutive_failures = 0

    def healthy(self) -> bool:
        return self.consecutive_failures < self.MAX_CONSECUTIVE_FAILURES

    @contextmanager
    def _pipeline_call(self, seeds: tuple[int, ...] = ()):
        """One pipeline call: injected faults, out-of-memory recovery, failure count.

        Out of memory and any other unexpected exception count as a failure of the replica;
        a bad input or a cancelled job is the job's own doing and counts neither way."""
        import torch

        self.pipeline_calls += 1
        try:
            if self.pipeline_calls in self.fault_oom_calls or \
                    self.fault_oom_seeds.intersection(seeds):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected fault)")
            yield
        except torch.cuda.OutOfMemoryError as exc:
            self.consecutive_failures += 1
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise OutOfMemory(str(exc).splitlines()[0][:200]) from None
        except (PipelineInputError, Cancelled, RetouchError):
            raise
        except Exception:
            self.consecutive_failures += 1
            raise
        else:
            self.consecutive_failures = 0

    def run(self, request, inputs: dict[str, Any], ctx: RunContext) -> list:
        spec = self.registry.for_request(request)
        for field in request.image_fields():
            if inputs.get(field) is None:
                raise InvalidInput(field, "image is missing")
        ctx.check_cancelled()
        with pipeline_input_errors(), self._pipeline_call((ctx.seed,)):
            outputs = spec.run_pipeline(self.store, request, inputs, ctx)
        expected = spec.output_count(request)
        if len(outputs) != expected:
            raise RuntimeError(f"{spec.name} produced {len(outputs)} outputs, expected {expected}")
        ctx.report(1.0)
        return outputs

    def run_job(self, request, raw_inputs: dict[str, bytes], seed: int,
                progress: Callable[[float], None],
                is_cancelled: Callable[[], bool],
                on_step: Callable[[int, int], None] | None = None) -> list[bytes]:
        spec = self.registry.for_request(request)
        with pipeline_input_errors():
            inputs = spec.decode_inputs(request, raw_inputs)
        ctx = _context(seed, progress, is_cancelled, on_step, self.fault_step_delay_s)
        outputs = self.run(request, inputs, ctx)
        return spec.encode_outputs(request, outputs)

    def run_jobs(self, jobs: list[Job]) -> list[Outcome]:
        """Run jobs of one batch key together; one `Outcome` per job, in order."""
        timers = [_StepTimer(job.progress) for job in jobs]
        jobs = [replace(job, progress=timer) for job, timer in zip(jobs, timers)]
        outcomes = self._run_timed(jobs)
        revisions = self.model_revisions()
        for outcome, timer in zip(outcomes, timers):
            outcome.step_seconds = timer.intervals
            outcome.model_revisions = revisions
        return outcomes

    def model_revisions(self) -> dict[str, str]:
        """{spec: revision} of every model the store has loaded (the reel loads none)."""
        revisions = getattr(self.store, "revisions", None)
        return dict(revisions()) if revisions is not None else {}

    def _run_timed(self, jobs: list[Job]) -> list[Outcome]:
        spec = self.registry.for_request(jobs[0].request) if jobs else None
        if len(jobs) < 2 or spec.run_batch is None:
            return [self._run_alone(job) for job in jobs]
        outcomes: list[Outcome | None] = [None] * len(jobs)
        ready: list[tuple[int, dict[str, Any], RunContext]] = []
        for i, job in enumerate(jobs):
            try:
                with pipeline_input_errors():
                    inputs = spec.decode_inputs(job.request, job.raw_inputs)
                ready.append((i, inputs, _context(job.seed, job.progress, job.is_cancelled,
                                                  job.on_step, self.fault_step_delay_s)))
            except Exception as exc:  # noqa: BLE001 - a bad job fails alone
                outcomes[i] = Outcome(error=exc)
        try:
            with self._pipeline_call(tuple(ctx.seed for _, _, ctx in ready)):
                results = spec.run_pipeline_batch(
                    self.store, [jobs[i].request for i, _, _ in ready], [x for _, x, _ in ready],
                    [ctx for _, _, ctx in ready])
        except Exception:  # noqa: BLE001 - e.g. out of memory: retry each job on its own
            for i, _, _ in ready:
                outcomes[i] = self._run_alone(jobs[i])
            return outcomes  # type: ignore[return-value]
        for (i, _, _), result in zip(ready, results):
            outcomes[i] = self._outcome(spec, jobs[i].request, result, len(ready))
        return outcomes  # type: ignore[return-value]

    def _run_alone(self, job: Job) -> Outcome:
        try:
            return Outcome(outputs=self.run_job(job.request, job.raw_inputs, job.seed,
                                                job.progress, job.is_cancelled, job.on_step))
        except Exception as exc:  # noqa: BLE001 - the caller decides what each error means
            return Outcome(error=exc)

    @staticmethod
    def _outcome(spec, request, result, batch_size: int) -> Outcome:
        if isinstance(result, BaseException):
            if isinstance(result, PipelineInputError):
                result = invalid_input_from(result)
            return Outcome(error=result, batch_size=batch_size)
        expected = spec.output_count(request)
        if len(result) != expected:
            return Outcome(error=RuntimeError(f"{spec.name} produced {len(result)} outputs, "
                                              f"expected {expected}"), batch_size=batch_size)
        try:
            return Outcome(outputs=spec.encode_outputs(request, result), batch_size=batch_size)
        except Exception as exc:  # noqa: BLE001
            return Outcome(error=exc, batch_size=batch_size)
