"""Serving benchmarks: job-creation throughput against the bare stack and serving overhead,
measured side by side in one run and printed as ratios.

    python -m retouch.scripts.bench_serving [--creates 300] [--rounds 3] [--jobs 5]
        [--executor ray|inprocess] [--database-url postgresql://...] [--threads 1]
        [--client events|poll] [--creation-only] [--json]

1. Job creation: `POST /api/v1/generations` through the app (auth, validation, pricing, atomic
   slot + budget + credit reservation, ledger and job insert; no executor, so jobs stay pending)
   next to the bare stack: a minimal FastAPI app on the same database doing the core of it in ONE
   transaction (read the key, conditional UPDATE of the balance, INSERT the job) with SQLAlchemy
   Core. Both are driven by the same in-process client in alternating rounds of `--creates`; the
   best round of each is reported with the ratio.
2. Serving overhead (skipped with `--creation-only`): the same generator job run directly on the
   pipeline `TaskRunner`, versus end to end through the API + dispatcher + executor (create,
   lease, run, store, settle), in alternating blocks of five jobs each way. The client waits on
   the job's event stream (`--client events`, the completion is pushed) or polls `GET` every
   10 ms (`--client poll`, the old way). The difference is the serving overhead.

`--json` prints one JSON object at the end: `create_per_s`, `baseline_create_per_s`,
`create_ratio`, `direct_ms_p50`, `end_to_end_ms_p50`, `overhead_ms_p50` (p50 end to end minus
p50 direct), their minima, `executor`, `client`, `jobs`, `database` (the overhead figures are
null with `--creation-only`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path


def _account_key(services, plan: str = "pro", credits: int = 10**9) -> str:
    from retouch.serving.core import accounts, keys
    from retouch.serving.core.db import transaction

    with transaction(services.session_factory) as session:
        account = accounts.create_account(session, "bench", plan=plan, credits=credits)
        _, secret = keys.create_key(session, account.id)
    return secret


def baseline_app(database_url: str):
    """The bare stack: FastAPI + one SQLAlchemy Core transaction per create (its own tables)."""
    from fastapi import FastAPI, Header, HTTPException
    from sqlalchemy import (BigInteger, Column, Integer, MetaData, String, Table, insert, select,
                            update)

    from retouch.serving.core.db import make_engine

    engine = make_engine(database_url)
    meta = MetaData()
    keys = Table("bench_keys", meta, Column("secret", String, primary_key=True),
                 Column("account", String))
    accounts = Table("bench_accounts", meta, Column("id", String, primary_key=True),
                     Column("balance", BigInteger))
    jobs = Table("bench_jobs", meta, Column("id", String, primary_key=True),
                 Column("account", String), Column("prompt", String), Column("cost", Integer))
    meta.drop_all(engine)
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(accounts).values(id="a1", balance=10**12))
        conn.execute(insert(keys).values(secret="k1", account="a1"))
    app = FastAPI()

    @app.post("/jobs", status_code=201)
    def create(body: dict, authorization: str = Header()) -> dict:
        with engine.begin() as conn:
            account = conn.scalar(select(keys.c.account).where(
                keys.c.secret == authorization.removeprefix("Bearer ")))
            if account is None:
                raise HTTPException(401)
            done = conn.execute(update(accounts).where(accounts.c.id == account,
                                                       accounts.c.balance >= 40)
                                .values(balance=accounts.c.balance - 40))
            if done.rowcount != 1:
                raise HTTPException(402)
            job_id = str(uuid.uuid4())
            conn.execute(insert(jobs).values(id=job_id, account=account, cost=40,
                                             prompt=body["input"]["prompt"]))
        return {"id": job_id, "status": "pending"}

    return app, engine


def _create_rate(client, path: str, headers_for, creates: int, offset: int) -> float:
    started = time.perf_counter()
    for i in range(creates):
        response = client.post(path, headers=headers_for(offset + i), json={
            "tool": "generator", "input": {"prompt": f"product shot {offset + i}"},
            "options": {"quality": "low"}})
        assert response.status_code == 201, response.text
    return creates / (time.perf_counter() - started)


def bench_creation(home: Path, creates: int, rounds: int, database_url: str | None) -> dict:
    """Job creation through the app and through the bare stack on the same database, in
    alternating rounds; the best round of each."""
    from fastapi.testclient import TestClient

    from retouch.serving.app import build_app
    from retouch.serving.core.accounts import plan_slot_limit
    from retouch.serving.services import build_services
    from retouch.serving.settings import Settings

    settings = Settings(home=home, database_url=database_url, executor="inprocess")
    services = build_services(settings)
    total = creates * rounds + 5
    # Jobs stay pending and hold their slots: enough pro accounts that slots never answer.
    per_account = plan_slot_limit("pro")
    secrets_ = [_account_key(services) for _ in range(-(-total // per_account) + 1)]
    bare, bare_engine = baseline_app(settings.resolved_database_url)
    ours, theirs = [], []

    def ours_headers(i: int) -> dict:
        return {"Authorization": f"Bearer {secrets_[i // per_account]}"}

    def bare_headers(_i: int) -> dict:
        return {"Authorization": "Bearer k1"}

    try:
        with TestClient(build_app(settings, services=services)) as client, \
                TestClient(bare) as bare_client:
            _create_rate(client, "/api/v1/generations", ours_headers, 5, total - 5)  # warm-up
            _create_rate(bare_client, "/jobs", bare_headers, 5, 0)
            for n in range(rounds):
                theirs.append(_create_rate(bare_client, "/jobs", bare_headers, creates,
                                           n * creates))
                ours.append(_create_rate(client, "/api/v1/generations", ours_headers, creates,
                                         n * creates))
    finally:
        bare_engine.dispose()
        services.engine.dispose()
    result = {"create_per_s": max(ours), "baseline_create_per_s": max(theirs),
              "create_ratio": max(ours) / max(theirs)}
    print(f"job creation ({'postgresql' if database_url else 'sqlite'}, best of {rounds} rounds "
          f"of {creates}): retouch {result['create_per_s']:.0f} jobs/s | bare FastAPI + one "
          f"Core transaction {result['baseline_create_per_s']:.0f} jobs/s | ratio "
          f"{result['create_ratio']:.2f}x")
    return result


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


def _wait_for_completion(get, post, client_kind: str, headers: dict, i: int) -> float:
    """Seconds from POST to `completed` for generator job `i`, through `post`/`get` callables
    of an HTTP client: wait on the job's event stream, or poll GET every 10 ms."""
    t0 = time.perf_counter()
    job = post("/api/v1/generations", json=_generator_body(i), headers=headers).json()["generation"]
    if client_kind == "events":  # returns when the stream ends with the generation
        stream = get(f"/api/v1/generations/{job['id']}/events", headers=headers)
        job = json.loads(stream.text.rsplit("data: ", 1)[1])["generation"]
    while job["status"] not in ("completed", "failed"):
        time.sleep(0.01)
        job = get(f"/api/v1/generations/{job['id']}", headers=headers).json()["generation"]
    assert job["status"] == "completed", job
    return time.perf_counter() - t0


@contextmanager
def end_to_end_client(settings, client_kind: str = "events", transport: str = "http",
                      threads: int | None = None):
    """`(one(i) -> seconds, startup_s)`: seconds from POST to `completed` for generator job `i`
    through API + dispatcher + executor.

    `transport="http"`: a real `retouch serve` process on a free loopback port, driven over HTTP
    by httpx from this process, as any client reaches it (start-up = process start to ready).
    `transport="testclient"`: the app in this process behind Starlette's TestClient; the
    client's threads then share this process's GIL with the dispatcher and the pipeline, which
    adds their cost to the figure."""
    if transport == "testclient":
        with _testclient(settings, client_kind) as measured:
            yield measured
        return
    with _http_server(settings, threads) as (base_url, startup):
        import httpx

        from retouch.serving.services import build_services

        services = build_services(settings, migrate=False)  # the server migrated it
        try:
            secret = _account_key(services)
        finally:
            services.engine.dispose()
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=base_url, timeout=120) as client:
            def one(i: int) -> float:
                return _wait_for_completion(client.get, client.post, client_kind, headers, i)

            one(10_000)  # warm-up: first calls load the models in the replica
            one(10_001)
            yield one, startup


@contextmanager
def _http_server(settings, threads: int | None):
    """A `retouch serve` child process for `settings`: yields (base URL, seconds to ready)."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, RETOUCH_HOME=str(settings.home), RETOUCH_PROFILE=settings.profile,
               RETOUCH_DEVICE=settings.device, RETOUCH_EXECUTOR=settings.executor,
               RETOUCH_DISPATCHER_CONCURRENCY=str(settings.dispatcher_concurrency))
    if settings.database_url:
        env["RETOUCH_DATABASE_URL"] = settings.database_url
    if settings.model_cache:
        env["RETOUCH_MODEL_CACHE"] = str(settings.model_cache)
    if settings.executor == "inprocess" and threads:
        env["OMP_NUM_THREADS"] = str(threads)  # the server's torch threads, like the direct run
    command = [os.path.join(os.path.dirname(sys.executable), "retouch"), "serve",
               "--port", str(port)]
    started = time.perf_counter()
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"retouch serve exited with {server.returncode}")
            if time.perf_counter() - started > 300:
                raise RuntimeError("retouch serve was not ready after 300 s")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield base_url, time.perf_counter() - started
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def _testclient(settings, client_kind: str):
    from fastapi.testclient import TestClient

    from retouch.serving.app import build_app, make_default_executor
    from retouch.serving.runtime import ensure_models
    from retouch.serving.services import build_services

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
            return _wait_for_completion(client.get, client.post, client_kind, headers, i)

        one(10_000)  # warm-up: first call loads the models in the replica
        try:
            yield one, startup
        finally:
            services.engine.dispose()


def bench_overhead(settings, jobs: int, client_kind: str = "events",
                   threads_override: int | None = None, block: int = 5,
                   transport: str = "http") -> tuple[list[float], list[float], float]:
    """(direct seconds, end-to-end seconds, executor start-up) for `jobs` generator jobs each
    way, alternating blocks of `block` direct and `block` end-to-end jobs: both see the same
    machine load, and each block runs warm, as a busy server does."""
    from retouch.serving.runtime import ensure_models

    ensure_models(settings)  # once, before the server and the direct runner load them
    direct, e2e = [], []
    with direct_runner(settings, threads_override) as run_direct, \
            end_to_end_client(settings, client_kind, transport,
                              threads_override) as (run_end_to_end, startup):
        for first in range(0, jobs, block):
            ids = range(first, min(jobs, first + block))
            direct.extend(run_direct(i) for i in ids)
            e2e.extend(run_end_to_end(i) for i in ids)
    return direct, e2e, startup


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=300, help="creates per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating creation rounds")
    parser.add_argument("--creation-only", action="store_true",
                        help="measure job creation only (no executor, no overhead jobs)")
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--executor", choices=("ray", "inprocess"), default="ray")
    parser.add_argument("--client", choices=("events", "poll"), default="events",
                        help="wait on the event stream (default) or poll GET every 10 ms")
    parser.add_argument("--transport", choices=("http", "testclient"), default="http",
                        help="a `retouch serve` process over loopback HTTP (default), or the "
                             "app in this process behind Starlette's TestClient")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--model-cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads in this process (in-process executor, baseline)")
    parser.add_argument("--dispatcher-concurrency", type=int, default=1,
                        help="the server's jobs in flight (default 1: one at a time, no "
                             "batching); above 1 it batches as `retouch serve` does by default, "
                             "and a lone job waits up to batch_wait_timeout_s for company")
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

    ms = lambda seconds: round(seconds * 1000, 1)  # noqa: E731
    result = {"executor": None if args.creation_only else args.executor,
              "client": None if args.creation_only else args.client,
              "transport": None if args.creation_only else args.transport,
              "dispatcher_concurrency": None if args.creation_only else args.dispatcher_concurrency,
              "database": "postgresql" if args.database_url else "sqlite",
              "jobs": 0 if args.creation_only else args.jobs,
              "creates_per_round": args.creates, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="retouch-bench-") as tmp:
        home = Path(tmp)
        creation = bench_creation(home / "create", args.creates, args.rounds, args.database_url)
        result.update({name: round(value, 3 if name == "create_ratio" else 1)
                       for name, value in creation.items()})
        for name in ("direct_ms_p50", "end_to_end_ms_p50", "overhead_ms_p50", "direct_ms_min",
                     "end_to_end_ms_min", "overhead_ms_min", "executor_startup_s"):
            result[name] = None
        if not args.creation_only:
            settings = Settings(home=home / "serve", profile=args.profile, device=args.device,
                                executor=args.executor, model_cache=args.model_cache,
                                dispatcher_concurrency=args.dispatcher_concurrency)
            direct, e2e, startup = bench_overhead(settings, args.jobs, args.client, args.threads,
                                                  transport=args.transport)
            print(f"{args.executor} executor start-up {startup:6.2f} s; client: {args.client} "
                  f"over {args.transport}")
            # min is the least noisy statistic on a shared machine; the median beside it.
            for label, stat in (("min", min), ("median", statistics.median)):
                d, e = stat(direct), stat(e2e)
                print(f"[{label:6s}] pipeline direct {d * 1000:7.1f} ms/job | API + dispatcher "
                      f"+ {args.executor} {e * 1000:7.1f} ms/job | overhead "
                      f"{(e - d) * 1000:+7.1f} ms/job, ratio {e / d:4.2f}x")
            p50_direct, p50_e2e = statistics.median(direct), statistics.median(e2e)
            result.update({
                "direct_ms_p50": ms(p50_direct), "end_to_end_ms_p50": ms(p50_e2e),
                "overhead_ms_p50": ms(p50_e2e - p50_direct), "direct_ms_min": ms(min(direct)),
                "end_to_end_ms_min": ms(min(e2e)), "overhead_ms_min": ms(min(e2e) - min(direct)),
                "executor_startup_s": round(startup, 2)})
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
