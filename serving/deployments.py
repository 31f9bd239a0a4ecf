"""Ray Serve deployments: one application per model family, each replica hosting a `TaskRunner`.

Which tasks a family runs is the registry's (`TaskSpec.family`): `DiffusionDeployment` the
`diffusion` family (generator, editor, photographer, ai_filter, AIXpose `enhance` and `video`),
`UpscalerDeployment` the `upscaler` family. `build_diffusion_app` / `build_upscaler_app` are the
families' application builders (a Serve config's `import_path`; `args` validate into
`EngineConfig`); `serving.serve_config` reads the config that deploys them.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

BOARD_NAME = "retouch-progress-board"
RAY_NAMESPACE = "retouch"


class EngineConfig(BaseModel):
    """What a replica needs to build its `ModelStore` and `TaskRunner`: the typed `args` of a
    family's application in the Serve config (Ray validates them into this model)."""

    model_config = ConfigDict(extra="forbid")

    profile: str = "tiny"
    device: str = "cpu"
    dtype: str | None = None  # e.g. "bfloat16"; unset: float32 on CPU, the profile's elsewhere
    cache_dir: str | None = None  # unset: the model store's default cache
    overrides: dict[str, str] = Field(default_factory=dict)
    max_batch_size: int = Field(1, ge=1)  # compatible jobs denoised together (`@serve.batch`)
    batch_wait_timeout_s: float = Field(0.0, ge=0.0)
    fault_oom_calls: tuple[int, ...] = ()  # fault injection: these pipeline calls run out of memory
    fault_oom_seeds: tuple[int, ...] = ()  # fault injection: jobs with these seeds do, every time
    # Fault injection: each job holds its replica this long first, idle (a slow accelerator), so
    # load tests keep replicas busy without spending CPU.
    fault_job_delay_s: float = Field(0.0, ge=0.0)
    fault_step_delay_s: float = Field(0.0, ge=0.0)  # fault injection: a pause at every step

    def build_runner(self):
        import os

        from retouch.models.store import ModelStore

        from .runner import TaskRunner

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        store = ModelStore(profile=self.profile, device=self.device, dtype=self.dtype,
                           cache_dir=Path(self.cache_dir) if self.cache_dir else None,
                           overrides=self.overrides or None)
        return TaskRunner(store, fault_oom_calls=tuple(self.fault_oom_calls),
                          fault_oom_seeds=tuple(self.fault_oom_seeds),
                          fault_step_delay_s=self.fault_step_delay_s)


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
        self._job_delay_s = engine_config.fault_job_delay_s
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
        if self._job_delay_s:
            time.sleep(self._job_delay_s * len(calls))  # in the batch thread: the loop stays free
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

# A family's Serve options where the Serve config names none (the config's values replace
# these; a config's `ray_actor_options` replaces the dict as a whole, as Serve does).
DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 4,  # ≥ the replica's max_batch_size, so batches can fill
    "ray_actor_options": {"num_cpus": 0, "num_gpus": 0},
}


def deployment_name(family: str) -> str:
    """The Serve deployment name of a family's replicas (`deployments[].name` in the config)."""
    return _FAMILY_CLASSES[family].__name__


def builder_import_path(family: str) -> str:
    """The `import_path` of a family's application builder."""
    return f"{__name__}:build_{family}_app"


def family_application(family: str, args: EngineConfig | dict[str, Any]):
    """The Serve application of one family: its deployment bound to the validated args."""
    from ray import serve

    engine_config = EngineConfig.model_validate(args)
    cls = _FAMILY_CLASSES[family]
    return serve.deployment(cls, name=cls.__name__, **DEPLOYMENT_DEFAULTS).bind(engine_config)


# Application builders, one per family, for the Serve config's `import_path` (also usable with
# `serve build` / `serve run`). Ray passes the config's `args`; `EngineConfig` validates them.
def build_diffusion_app(args: EngineConfig):
    """`retouch.serving.deployments:build_diffusion_app`: the `diffusion` family."""
    return family_application("diffusion", args)


def build_upscaler_app(args: EngineConfig):
    """`retouch.serving.deployments:build_upscaler_app`: the `upscaler` family."""
    return family_application("upscaler", args)


@dataclass
class RayFamilies:
    """Handles to the running family applications plus the progress board."""

    handles: dict[str, Any]
    board: Any

    def handle_for(self, request):
        from .tasks import TASKS

        return self.handles[TASKS.for_request(request).family]


def start_progress_board(*, detached: bool = False):
    """The progress board actor (created once, found by name afterwards).

    Embedded, it lives as long as this driver. On a shared cluster (`detached`) it is pinned to
    the head node and outlives any one API pod, which all find the same board.
    """
    import ray

    options: dict[str, Any] = {"name": BOARD_NAME, "namespace": RAY_NAMESPACE,
                               "get_if_exists": True, "num_cpus": 0}
    if detached:
        options.update(lifetime="detached", resources={"node:__internal_head__": 0.001})
    return ray.remote(ProgressBoard).options(**options).remote()


def deploy_serve_config(config) -> None:
    """Deploy a Serve config (`ray.serve.schema.ServeDeploySchema`) as `serve deploy` would:
    the controller imports each application's builder with its `args` (Ray must be initialised)."""
    from ray.serve._private.api import serve_start

    client = serve_start(proxy_location=config.proxy_location,
                         http_options=config.http_options.model_dump())
    client.deploy_apps(config, _blocking=False)


def connect_families(app_names: dict[str, str], *, detached_board: bool = False,
                     wait_s: float = 300.0, poll_s: float = 0.5) -> RayFamilies:
    """Serve handles to each family's application, looked up by application name.

    Waits up to `wait_s` for applications that do not exist yet (just deployed, or a RayService
    still starting them); the handles queue requests while replicas start. The handles are
    ready for concurrent use: each one's router is started here.
    """
    from ray import serve
    from ray.serve.exceptions import RayServeException

    board = start_progress_board(detached=detached_board)
    handles = {}
    deadline = time.monotonic() + wait_s
    for family, app_name in app_names.items():
        while True:
            try:
                handle = serve.get_app_handle(app_name)
                break
            except RayServeException:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Serve application {app_name!r} ({family} family) "
                                       f"did not appear within {wait_s:g} s") from None
                time.sleep(poll_s)
        # Start the handle's router now, in this thread. A handle starts it on first use, and
        # dispatcher workers using a fresh handle at the same moment would each start one
        # under the same handle id; their autoscaling reports then overwrite each other at
        # the Serve controller, which sees a share of the queue and may never scale up.
        handle.options()
        handles[family] = handle
    return RayFamilies(handles=handles, board=board)


def wait_until_running(app_names, timeout_s: float = 600.0, poll_s: float = 0.5) -> None:
    """Block until every named application is RUNNING; raise if one fails to deploy."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        applications = serve.status().applications
        statuses = {name: applications[name].status if name in applications else "NOT_STARTED"
                    for name in app_names}
        failed = {n: applications[n].message for n, s in statuses.items()
                  if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError("Serve could not deploy " + "; ".join(
                f"{name}: {message}" for name, message in failed.items()))
        if all(s == "RUNNING" for s in statuses.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Serve applications not running after {timeout_s:g} s: "
                               f"{statuses}")
        time.sleep(poll_s)
