"""Serving benchmarks: job-creation throughput and serving overhead, printed as ratios.

    python -m retouch.scripts.bench_serving [--creates 200] [--jobs 5] [--executor ray|inprocess]
        [--database-url postgresql://...] [--threads 1] [--client events|poll] [--json]

1. Job creation: `POST /api/v1/generations` through the app (auth, validation, pricing, atomic
   credit + slot reservation, insert) with no executor, so jobs stay pending: jobs/s; beside it
   the bare stack's rate (`bench_create`: a minimal FastAPI app doing the core statements in one
   transaction).
2. Serving overhead: the same generator job run directly on the pipeline `TaskRunner`, versus
   end to end through the API + dispatcher + executor (create, lease, run, store, settle), in
   alternating blocks of five jobs each way. The client waits on the job's event stream
   (`--client events`, the completion is pushed) or polls `GET` every 10 ms (`--client poll`,
   the old way). The difference is the serving overhead.

`--json` prints one JSON object at the end: `create_per_s`, `baseline_create_per_s`,
`create_ratio`, `direct_ms_p50`, `end_to_end_ms_p50`, `overhead_ms_p50` (p50 end to end minus
p50 direct), their minima, `executor`, `client`, `jobs`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def _account_key(services, plan: str = "pro", credits: int = 10**9) -> str:
    from retouch.serving.core import accounts, keys
    from retouch.serving.core.db import transaction

    with transaction(services.session_factory) as session:
        account = accounts.create_account(session, "bench", plan=plan, credits=credits)
        _, secret = keys.create_key(session, account.id)
    return secret


def bench_creation(creates: int, database_url: str | None) -> dict:
    """Job creation against the bare stack, side by side (`bench_create`, one round)."""
    from retouch.scripts import bench_create

    argv = ["--creates", str(creates), "--rounds", "1"]
    return bench_create.main(argv + (["--database-url", database_url] if database_url else []))


@contextmanager
def direct_runner(settings, threads_override: int | None = None):
    """`run(i) -> seconds` for generator job `i` on a `TaskRunner` in this process, no serving
    around it (models loaded and warmed up first)."""
    from retouch.models.store import ModelStore
    from retouch.pipelines.common import RunContext
    from retouch.serving.runner import TaskRunner
    from retouch.serving.tasks import parse_request

    import torch

    # Ray starts CPU replicas with OMP_NUM_THREADS=1; run the direct baseline the same way.
    threads = torch.get_num_threads()
    if settings.executor == "ray" and settings.device == "cpu":
        torch.set_num_threads(1)
    elif threads_override:
        torch.set_num_threads(threads_override)
    engine = TaskRunner(ModelStore(profile=settings.profile, device=settings.device,
                                   cache_dir=settings.resolved_model_cache))
    request = parse_request(_generator_body(0))
    engine.run(request, {}, RunContext(seed=0))  # warm-up: load the models
    engine.run(request, {}, RunContext(seed=0))

    def run(i: int) -> float:
        started = time.perf_counter()
        engine.run(parse_request(_generator_body(i)), {}, RunContext(seed=i))
        return time.perf_counter() - started

    try:
        yield run
    finally:
        torch.set_num_threads(threads)


def _generator_body(i: int) -> dict:
    return {"tool": "generator", "input": {"prompt": f"a ceramic vase {i}"},
            "options": {"quality": "low", "seed": i}}


@contextmanager
def end_to_end_client(settings, client_kind: str = "events"):
    """`(one(i) -> seconds, startup_s)`: seconds from POST to `completed` for generator job `i`
    through API + dispatcher + executor; the client waits on the event stream, or polls every
    10 ms (`client_kind="poll"`)."""
    from fastapi.testclient import TestClient

    from retouch.serving.app import build_app, make_default_executor
    from retouch.serving.services import build_services
    from retouch.serving.runtime import ensure_models

    ensure_models(settings)
    services = build_services(settings)
    services.executor = make_default_executor(services)
    secret = _account_key(services)
    headers = {"Authorization": f"Bearer {secret}"}
    app = build_app(settings, services=services)
    started = time.perf_counter()
    with TestClient(app) as client:
        startup = time.perf_counter() - started

        def one(i: int) -> float:
            t0 = time.perf_counter()
            job = client.post("/api/v1/generations", json=_generator_body(i),
                              headers=headers).json()["generation"]
            if client_kind == "events":  # returns when the stream ends with the generation
                stream = client.get(f"/api/v1/generations/{job['id']}/events", headers=headers)
                job = json.loads(stream.text.rsplit("data: ", 1)[1])["generation"]
            while job["status"] not in ("completed", "failed"):
                time.sleep(0.01)
                job = client.get(f"/api/v1/generations/{job['id']}",
                                 headers=headers).json()["generation"]
            assert job["status"] == "completed", job
            return time.perf_counter() - t0

        one(10_000)  # warm-up: first call loads the models in the replica
        try:
            yield one, startup
        finally:
            services.engine.dispose()


def bench_overhead(settings, jobs: int, client_kind: str = "events",
                   threads_override: int | None = None, block: int = 5
                   ) -> tuple[list[float], list[float], float]:
    """(direct seconds, end-to-end seconds, executor start-up) for `jobs` generator jobs each
    way, alternating blocks of `block` direct and `block` end-to-end jobs: both see the same
    machine load, and each block runs warm, as a busy server does."""
    direct, e2e = [], []
    with direct_runner(settings, threads_override) as run_direct, \
            end_to_end_client(settings, client_kind) as (run_end_to_end, startup):
        for first in range(0, jobs, block):
            ids = range(first, min(jobs, first + block))
            direct.extend(run_direct(i) for i in ids)
            e2e.extend(run_end_to_end(i) for i in ids)
    return direct, e2e, startup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--executor", choices=("ray", "inprocess"), default="ray")
    parser.add_argument("--client", choices=("events", "poll"), default="events",
                        help="wait on the event stream (default) or poll GET every 10 ms")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--model-cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads in this process (in-process executor, baseline)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the figures at the end")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Ray runs its workers at niceness 15; on a shared machine that alone would make the replica
    # slower than the direct baseline in this process. Compare at equal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    from retouch.serving.settings import Settings

    with tempfile.TemporaryDirectory(prefix="retouch-bench-") as tmp:
        home = Path(tmp)
        database = "postgres" if args.database_url else "sqlite"
        creation = bench_creation(args.creates, args.database_url)
        rate, baseline = creation["create_per_s"], creation["baseline_create_per_s"]

        settings = Settings(home=home / "serve", profile=args.profile, device=args.device,
                            executor=args.executor, model_cache=args.model_cache,
                            dispatcher_concurrency=1)
        direct, e2e, startup = bench_overhead(settings, args.jobs, args.client, args.threads)
        print(f"{args.executor} executor start-up {startup:6.2f} s; client: {args.client}")
        # min is the least noisy statistic on a shared machine; the median is shown beside it.
        for label, stat in (("min", min), ("median", statistics.median)):
            d, e = stat(direct), stat(e2e)
            print(f"[{label:6s}] pipeline direct {d * 1000:7.1f} ms/job | API + dispatcher + "
                  f"{args.executor} {e * 1000:7.1f} ms/job | overhead {(e - d) * 1000:+7.1f} "
                  f"ms/job, ratio {e / d:4.2f}x")
    if args.json:
        ms = lambda seconds: round(seconds * 1000, 1)  # noqa: E731
        print(json.dumps({
            "executor": args.executor, "client": args.client, "database": database,
            "jobs": args.jobs, "create_per_s": round(rate, 1),
            "baseline_create_per_s": round(baseline, 1),
            "create_ratio": round(rate / baseline, 3),
            "direct_ms_p50": ms(statistics.median(direct)),
            "end_to_end_ms_p50": ms(statistics.median(e2e)),
            "overhead_ms_p50": ms(statistics.median(e2e) - statistics.median(direct)),
            "direct_ms_min": ms(min(direct)), "end_to_end_ms_min": ms(min(e2e)),
            "overhead_ms_min": ms(min(e2e) - min(direct)),
            "executor_startup_s": round(startup, 2)}))


if __name__ == "__main__":
    main()
