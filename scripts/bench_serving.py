"""Serving benchmarks: job-creation throughput and serving overhead, printed as ratios.

    python -m retouch.scripts.bench_serving [--creates 200] [--jobs 5] [--executor ray|inprocess]
        [--database-url postgresql://...] [--threads 1]

1. Job creation: `POST /api/v1/generations` through the app (auth, validation, pricing, atomic
   credit + slot reservation, insert) with no executor, so jobs stay pending: jobs/s.
2. Serving overhead: the same generator job run directly on the `TaskRunner`, versus end to
   end through the API + dispatcher + executor (create, lease, run, store, settle, observed by
   polling every 10 ms). The ratio is the cost of the serving path around the pipeline.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _account_key(services, plan: str = "pro", credits: int = 10**9) -> str:
    from retouch.serving.core import accounts, keys
    from retouch.serving.core.db import transaction

    with transaction(services.session_factory) as session:
        account = accounts.create_account(session, "bench", plan=plan, credits=credits)
        _, secret = keys.create_key(session, account.id)
    return secret


def bench_job_creation(home: Path, creates: int, database_url: str | None) -> float:
    """Jobs created per second through the app (no executor: jobs stay pending)."""
    from fastapi.testclient import TestClient

    from retouch.serving.app import build_app
    from retouch.serving.services import build_services
    from retouch.serving.core.accounts import plan_slot_limit
    from retouch.serving.settings import Settings

    settings = Settings(home=home, database_url=database_url, executor="inprocess")
    services = build_services(settings)
    # Jobs stay pending and hold their slots: spread the creates over enough pro accounts
    # (6 slots each) that the plan's concurrency limit never answers instead.
    per_account = plan_slot_limit("pro")
    secrets_ = [_account_key(services) for _ in range(-(-(creates + 1) // per_account))]
    app = build_app(settings, services=services)
    with TestClient(app) as client:
        def create(i: int) -> None:
            body = {"tool": "generator", "input": {"prompt": f"product shot {i}"},
                    "options": {"quality": "low"}}
            secret = secrets_[(i + 1) // per_account]
            response = client.post("/api/v1/generations", json=body,
                                   headers={"Authorization": f"Bearer {secret}"})
            assert response.status_code == 201, response.text

        create(-1)  # warm-up
        started = time.perf_counter()
        for i in range(creates):
            create(i)
        elapsed = time.perf_counter() - started
    services.engine.dispose()
    return creates / elapsed


def bench_direct(settings, jobs: int, threads_override: int | None = None) -> list[float]:
    """Seconds per generator job on the `TaskRunner`, no serving around it."""
    from retouch.pipelines.common import RunContext
    from retouch.serving.runner import TaskRunner
    from retouch.serving.tasks import parse_request
    from retouch.models.store import ModelStore

    import torch

    # Ray starts CPU replicas with OMP_NUM_THREADS=1; run the direct baseline the same way.
    threads = torch.get_num_threads()
    if settings.executor == "ray" and settings.device == "cpu":
        torch.set_num_threads(1)
    elif threads_override:
        torch.set_num_threads(threads_override)
    runner = TaskRunner(ModelStore(profile=settings.profile, device=settings.device,
                                   cache_dir=settings.resolved_model_cache))
    request = parse_request(_generator_body(0))
    runner.run(request, {}, RunContext(seed=0))  # warm-up: load the models
    runner.run(request, {}, RunContext(seed=0))
    times = []
    for i in range(jobs):
        started = time.perf_counter()
        runner.run(parse_request(_generator_body(i)), {}, RunContext(seed=i))
        times.append(time.perf_counter() - started)
    torch.set_num_threads(threads)
    return times


def _generator_body(i: int) -> dict:
    return {"tool": "generator", "input": {"prompt": f"a ceramic vase {i}"},
            "options": {"quality": "low", "seed": i}}


def bench_end_to_end(settings, jobs: int) -> tuple[list[float], float]:
    """Seconds from POST to `completed` per job through API + dispatcher + executor."""
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
            while job["status"] not in ("completed", "failed"):
                time.sleep(0.01)
                job = client.get(f"/api/v1/generations/{job['id']}",
                                 headers=headers).json()["generation"]
            assert job["status"] == "completed", job
            return time.perf_counter() - t0

        one(10_000)  # warm-up: first call loads the models in the replica
        times = [one(i) for i in range(jobs)]
    services.engine.dispose()
    return times, startup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--executor", choices=("ray", "inprocess"), default="ray")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--model-cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads in this process (in-process executor, baseline)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from retouch.serving.settings import Settings

    with tempfile.TemporaryDirectory(prefix="retouch-bench-") as tmp:
        home = Path(tmp)
        rate = bench_job_creation(home / "create", args.creates, args.database_url)
        print(f"job creation   {rate:8.1f} jobs/s  ({args.creates} creates, "
              f"{'postgres' if args.database_url else 'sqlite'}; auth + validate + reserve + "
              f"insert)")

        settings = Settings(home=home / "serve", profile=args.profile, device=args.device,
                            executor=args.executor, model_cache=args.model_cache,
                            dispatcher_concurrency=1)
        direct = bench_direct(settings, args.jobs, args.threads)
        e2e, startup = bench_end_to_end(settings, args.jobs)
        print(f"{args.executor} executor start-up {startup:6.2f} s")
        # min is the least noisy statistic on a shared machine; the median is shown beside it.
        for label, stat in (("min", min), ("median", statistics.median)):
            d, e = stat(direct), stat(e2e)
            print(f"[{label:6s}] pipeline direct {d * 1000:7.1f} ms/job | API + dispatcher + "
                  f"{args.executor} {e * 1000:7.1f} ms/job | overhead {e - d:+.3f} s/job, "
                  f"ratio {e / d:4.2f}x")

if __name__ == "__main__":
    main()
