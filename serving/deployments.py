"""Ray Serve deployments: one per model family, each hosting a `TaskRunner`.

Which tasks a family runs is the registry's (`TaskSpec.family`): `DiffusionDeployment` the
`diffusion` family (generator, editor, photographer, ai_filter, AIXpose `enhance` and `video`),
`UpscalerDeployment` the `upscaler` family.

Both expose `run_job(job_id, request, images, seed)`: the typed request (pickled by Ray), the
input images as stored bytes keyed by field (`input.main_image`, ...); the reply carries the
outputs as encoded bytes in the request's output format. Progress and cancellation travel
through `ProgressBoard`, a small named Ray actor: replicas write progress to it and learn from
its answer whether the job was cancelled; the dispatcher reads progress from it and sets the
cancel flag.

Ray is imported inside functions only, so the in-process executor never needs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOARD_NAME = "retouch-progress-board"
RAY_NAMESPACE = "retouch"


@dataclass
class EngineConfig:
    """What a replica needs to build its `ModelStore` and `TaskRunner`."""

    profile: str = "tiny"
    device: str = "cpu"
    cache_dir: str = ""
    overrides: dict[str, str] = field(default_factory=dict)
    max_batch_size: int = 1  # compatible jobs denoised together (`@serve.batch` on a replica)
    batch_wait_timeout_s: float = 0.0
    fault_oom_calls: tuple[int, ...] = ()  # fault injection: these pipeline calls run out of memory

    def build_runner(self):
        import os

        from retouch.models.store import ModelStore

        from .runner import TaskRunner

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        store = ModelStore(profile=self.profile, device=self.device,
                           cache_dir=Path(self.cache_dir), overrides=self.overrides or None)
        return TaskRunner(store, fault_oom_calls=tuple(self.fault_oom_calls))


@dataclass
class FamilyOptions:
    """Ray Serve options of one deployment family (from the serve config file)."""

    num_replicas: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 0.0
    max_ongoing_requests: int = 4  # ≥ the replica's max_batch_size, so batches can fill


def load_family_options(config_path: Path | None) -> dict[str, FamilyOptions]:
    """Per-family options from a YAML serve config; the CPU embedded default without one."""
    from .tasks import TASKS

    families = TASKS.families()
    options = {name: FamilyOptions() for name in families}
    if config_path is None:
        return options
    import yaml

    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    for name, values in (raw.get("deployments") or {}).items():
        if name not in families:
            raise ValueError(f"serve config: unknown deployment family {name!r}; "
                             f"expected one of {', '.join(families)}")
        unknown = set(values or {}) - set(FamilyOptions.__dataclass_fields__)
        if unknown:
            raise ValueError(f"serve config: deployments.{name} has unknown option(s) "
                             f"{', '.join(sorted(unknown))}")
        options[name] = FamilyOptions(**(values or {}))
    return options


class ProgressBoard:
    """Job progress and cancel flags shared between replicas and the dispatcher (a Ray actor)."""

    def __init__(self):
        self._progress: dict[str, float] = {}
        self._steps: dict[str, tuple[int, int]] = {}
        self._cancelled: set[str] = set()

    def report(self, job_id: str, fraction: float, step: int | None = None,
               steps: int | None = None) -> bool:
        """Record progress (and the denoising step reached, of how many); answers whether the
        job has been cancelled."""
        self._progress[job_id] = float(fraction)
        if step is not None:
            self._steps[job_id] = (int(step), int(steps or step))
        return job_id in self._cancelled

    def progress(self, job_id: str) -> float:
        return self._progress.get(job_id, 0.0)

    def state(self, job_id: str) -> tuple[float, int | None, int | None]:
        """`(fraction, step, steps)`; the step pair is None until a step was reported."""
        step, steps = self._steps.get(job_id, (None, None))
        return self._progress.get(job_id, 0.0), step, steps

    def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)

    def forget(self, job_id: str) -> None:
        self._progress.pop(job_id, None)
        self._steps.pop(job_id, None)
        self._cancelled.discard(job_id)


class _BoardReporter:
    """Progress callback + cancel flag for one job inside a replica, throttled to ~5 reports/s.

    Reports never wait for the board: each one is sent and its answer (cancelled or not) is
    picked up once it has arrived, when the job next reports or checks its cancel flag."""

    def __init__(self, board, job_id: str, min_interval: float = 0.2):
        self._board, self._job_id, self._min_interval = board, job_id, min_interval
        self._last_sent = float("-inf")
        self._cancelled = False
        self._answer = None  # the ObjectRef of the last report's answer, until read
        self._step: tuple[int, int] | tuple[None, None] = (None, None)

    def progress(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last_sent < self._min_interval:
            return
        self._last_sent = now
        self._read_answer()
        self._answer = self._board.report.remote(self._job_id, fraction, *self._step)

    def step(self, step: int, steps: int) -> None:
        self._step = (step, steps)  # travels with the next progress report

    def is_cancelled(self) -> bool:
        self._read_answer()
        return self._cancelled

    def _read_answer(self) -> None:
        import ray

        if self._answer is None:
            return
        ready, _ = ray.wait([self._answer], timeout=0)
        if ready:
            self._cancelled = self._cancelled or bool(ray.get(ready[0]))
            self._answer = None


class _FamilyDeployment:
    """A replica holding one `TaskRunner` for the tasks of its `family`.

    Requests arriving together are collected by Serve's `@serve.batch` (up to the config's
    `max_batch_size`, waiting `batch_wait_timeout_s`); the runner denoises those with one batch
    key together. Batches run one at a time: diffusers pipelines keep per-call state.
    """

    family = ""

    def __init__(self, engine_config: EngineConfig):
        from ray import serve

        self._runner = engine_config.build_runner()
        self._board = None  # the progress board's handle, looked up on the first job
        self._run_batch = serve.batch(
            self._run_collected, max_batch_size=max(1, engine_config.max_batch_size),
            batch_wait_timeout_s=engine_config.batch_wait_timeout_s)

    async def run_job(self, job_id: str, request, images: dict[str, bytes],
                      seed: int) -> dict[str, Any]:
        """`{"outputs": [bytes, ...], "batch_size", "step_seconds"}`, or `{"error": {...}}` for
        a pipeline error. Errors travel as data, not exceptions, so their type survives Ray."""
        spec = self._runner.registry.for_request(request)
        if spec.family != self.family:
            raise ValueError(f"{type(self).__name__} does not run task {spec.name!r}")
        return await self._run_batch((job_id, request, images, seed))

    async def _run_collected(self, calls: list[tuple]) -> list[dict[str, Any]]:
        import asyncio

        return await asyncio.to_thread(self._run_calls, calls)

    def _run_calls(self, calls: list[tuple]) -> list[dict[str, Any]]:
        import ray

        from .batching import batch_groups
        from .replica_io import Job

        if self._board is None:
            self._board = ray.get_actor(BOARD_NAME, namespace=RAY_NAMESPACE)
        board = self._board
        jobs = []
        for job_id, request, images, seed in calls:
            reporter = _BoardReporter(board, job_id)
            reporter.progress(0.0)
            jobs.append(Job(request, images, seed, reporter.progress, reporter.is_cancelled,
                            reporter.step))
        replies: list[dict[str, Any]] = [{}] * len(jobs)
        for group in batch_groups(self._runner, jobs):
            for i, outcome in zip(group, self._runner.run_jobs([jobs[i] for i in group])):
                replies[i] = _reply(outcome)
        return replies

    def ready(self) -> bool:
        return True

    def check_health(self) -> None:
        """Serve's health check: a replica whose jobs keep failing (e.g. out of memory every
        time) is restarted rather than left wedged."""
        if not self._runner.healthy():
            raise RuntimeError(f"{self._runner.consecutive_failures} jobs in a row failed")


def _reply(outcome) -> dict[str, Any]:
    from retouch.pipelines.errors import Cancelled

    from .core.errors import RetouchError
    from .replica_io import OutOfMemory

    stats = {"batch_size": outcome.batch_size, "step_seconds": outcome.step_seconds,
             "model_revisions": outcome.model_revisions}
    error = outcome.error
    if error is None:
        return {"outputs": outcome.outputs, **stats}
    if isinstance(error, OutOfMemory):
        return {"error": {"code": "out_of_memory", "message": str(error), "field": None,
                          "cancelled": False, "out_of_memory": True}, **stats}
    if isinstance(error, Cancelled):
        return {"error": {"code": "service_unavailable", "message": str(error), "field": None,
                          "cancelled": True}, **stats}
    if isinstance(error, RetouchError):
        return {"error": {"code": error.code, "message": error.message, "field": error.field,
                          "cancelled": False}, **stats}
    # An unexpected failure: only its type travels (no internals leak into the job).
    return {"error": {"code": "service_unavailable", "message": type(error).__name__,
                      "field": None, "cancelled": False, "unexpected": True}, **stats}


class DiffusionDeployment(_FamilyDeployment):
    family = "diffusion"


class UpscalerDeployment(_FamilyDeployment):
    family = "upscaler"


_FAMILY_CLASSES = {cls.family: cls for cls in (DiffusionDeployment, UpscalerDeployment)}


@dataclass
class RayFamilies:
    """Handles to the running deployments plus the progress board."""

    handles: dict[str, Any]
    board: Any

    def handle_for(self, request):
        from .tasks import TASKS

        return self.handles[TASKS.for_request(request).family]


def deploy_families(engine_config: EngineConfig,
                    options: dict[str, FamilyOptions]) -> RayFamilies:
    """Start the progress board and one Serve application per family (Ray must be initialised)."""
    import ray
    from ray import serve

    board = ray.remote(ProgressBoard).options(
        name=BOARD_NAME, namespace=RAY_NAMESPACE, get_if_exists=True, num_cpus=0,
        lifetime=None).remote()
    serve.start(proxy_location="Disabled")
    targets = []
    for family, cls in _FAMILY_CLASSES.items():
        opts = options[family]
        deployment = serve.deployment(cls).options(
            name=cls.__name__, num_replicas=opts.num_replicas,
            max_ongoing_requests=opts.max_ongoing_requests,
            ray_actor_options={"num_gpus": opts.num_gpus, "num_cpus": opts.num_cpus})
        targets.append(serve.RunTarget(deployment.bind(engine_config), name=f"retouch-{family}",
                                       route_prefix=None))
    # Both families start in parallel (their replicas load models at the same time).
    handles = dict(zip(_FAMILY_CLASSES, serve.run_many(targets)))
    return RayFamilies(handles=handles, board=board)
