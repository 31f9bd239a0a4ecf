"""Two real API processes (`retouch serve`, in-process executors) on loopback against one
PostgreSQL schema and one Redis: creates raced across both charge once, lease each job once and
respect the plan's slots; an Idempotency-Key replays the same job whichever process answers; a
key's per-minute rate limit is counted across both processes.

Needs RETOUCH_TEST_POSTGRES_URL and a Redis at 127.0.0.1:6379 (skipped otherwise).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest
from sqlalchemy import func, select

from db_fixtures import postgres_schema
from serve_process import cli_json, retouch_serve

REDIS = ("127.0.0.1", 6379)
CREDITS = 10_000
RACED_CREATES = 16
SETTLE_TIMEOUT_S = 45


def _redis_up() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not os.environ.get("RETOUCH_TEST_POSTGRES_URL"),
                       reason="needs RETOUCH_TEST_POSTGRES_URL"),
    pytest.mark.skipif(not _redis_up(), reason="needs Redis at 127.0.0.1:6379"),
]


def body(n: int) -> dict:
    return {"tool": "generator", "input": {"prompt": f"a teapot {n}"},
            "options": {"quality": "low", "seed": n}}


def test_two_api_processes_share_money_slots_idempotency_and_rate_limits(
        tmp_path, tiny_cache_dir, monkeypatch):
    from retouch.models.tiny import build_tiny_models
    from retouch.serving.core.accounts import plan_slot_limit
    from retouch.serving.core.db import make_engine
    from retouch.serving.core.tables import Account, Generation, LedgerEntry

    build_tiny_models(tiny_cache_dir)
    with postgres_schema("multiapi") as url:
        monkeypatch.setenv("RETOUCH_DATABASE_URL", url)  # the CLI and both servers
        env = {"RETOUCH_MODEL_CACHE": str(tiny_cache_dir), "RETOUCH_DISPATCHER_CONCURRENCY": "2",
               "RETOUCH_REDIS_URL": f"redis://{REDIS[0]}:{REDIS[1]}/0"}
        serve_args = ("--executor", "inprocess", "--profile", "tiny", "--device", "cpu")
        with ExitStack() as stack:
            lock = threading.Lock()

            def start_server(name: str):  # both start at once: half the wait
                home = tmp_path / name
                home.mkdir()
                server = retouch_serve(home, *serve_args, env=env)
                ready = server.__enter__()
                with lock:
                    stack.push(server.__exit__)
                return ready

            with ThreadPoolExecutor(2) as pool:
                servers = list(pool.map(start_server, ("a", "b")))
            home = tmp_path / "a"
            account = cli_json(home, "accounts", "create", "--name", "racer", "--plan", "pro",
                               "--credits", str(CREDITS))["id"]
            secret = cli_json(home, "keys", "create", "--account", account)["secret"]
            limited_account = cli_json(home, "accounts", "create", "--name", "limited",
                                       "--plan", "pro", "--credits", "100")["id"]
            limited = cli_json(home, "keys", "create", "--account", limited_account,
                               "--rate-limit", "5")["secret"]
            auth = {"Authorization": f"Bearer {secret}"}
            clients = [stack.enter_context(httpx.Client(base_url=s.base_url, timeout=30))
                       for s in servers]

            # 1. Creates raced across both processes, released together.
            start = threading.Barrier(RACED_CREATES)

            def create(n: int) -> httpx.Response:
                start.wait(30)
                return clients[n % 2].post("/api/v1/generations", json=body(n), headers=auth)

            with ThreadPoolExecutor(RACED_CREATES) as pool:
                answers = list(pool.map(create, range(RACED_CREATES)))
            codes = sorted(r.status_code for r in answers)
            assert set(codes) <= {201, 429}, [r.text for r in answers if r.status_code >= 500]
            accepted = [r.json()["generation"]["id"] for r in answers if r.status_code == 201]
            refused = [r.json()["error"] for r in answers if r.status_code == 429]
            assert all(e["code"] == "queue_limit_exceeded" for e in refused), refused
            assert 1 <= len(accepted) and len(set(accepted)) == len(accepted)

            # 2. The same Idempotency-Key sent to both processes at once, then again to each.
            idem = {**auth, "Idempotency-Key": "multi-api-1"}
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while True:  # wait for a free slot (the raced jobs finish)
                first = clients[0].post("/api/v1/generations", json=body(99), headers=idem)
                if first.status_code != 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert first.status_code == 201, first.text
            job_id = first.json()["generation"]["id"]
            replays = [c.post("/api/v1/generations", json=body(99), headers=idem) for c in clients]
            assert [r.status_code for r in replays] == [200, 200]
            assert {r.json()["generation"]["id"] for r in replays} == {job_id}
            conflict = clients[1].post("/api/v1/generations", json=body(98), headers=idem)
            assert conflict.status_code == 409
            assert conflict.json()["error"]["code"] == "idempotency_conflict"
            accepted.append(job_id)

            # 3. Every job finishes once; money and slots add up.
            engine = make_engine(url)
            try:
                while True:
                    with engine.connect() as conn:
                        unfinished = conn.scalar(select(func.count()).select_from(Generation)
                                                 .where(Generation.account_id == account,
                                                        Generation.status.in_(
                                                            ["pending", "processing"])))
                    if unfinished == 0:
                        break
                    assert time.monotonic() < deadline, f"{unfinished} jobs still running"
                    time.sleep(0.2)
                with engine.connect() as conn:
                    jobs = conn.execute(select(Generation.id, Generation.status,
                                               Generation.attempts, Generation.cost_credits,
                                               Generation.created_at, Generation.finished_at)
                                        .where(Generation.account_id == account)).all()
                    balance, slots = conn.execute(
                        select(Account.credit_balance, Account.active_slots)
                        .where(Account.id == account)).one()
                    ledger = conn.execute(select(LedgerEntry.kind, LedgerEntry.amount)
                                          .where(LedgerEntry.account_id == account)).all()
            finally:
                engine.dispose()
            assert sorted(j.id for j in jobs) == sorted(accepted)  # no job made twice
            # each job leased once and completed
            assert all(j.status == "completed" and j.attempts == 1 for j in jobs), jobs
            spent = sum(j.cost_credits for j in jobs)
            assert balance == CREDITS - spent == sum(amount for _, amount in ledger)
            assert sorted(kind for kind, _ in ledger) == ["reserve"] * len(jobs) + ["topup"]
            assert slots == 0
            # Slots: a raced create beyond the plan's 6 was only accepted once a job had finished.
            raced = sorted((j for j in jobs if j.id != job_id), key=lambda j: j.created_at)
            for n, job in enumerate(raced):
                finished_before = sum(1 for other in raced
                                      if other.finished_at < job.created_at)
                assert n < plan_slot_limit("pro") + finished_before

            # 4. One key's per-minute limit, counted across both processes.
            limited_auth = {"Authorization": f"Bearer {limited}"}
            codes = [clients[n % 2].get("/api/v1/credits", headers=limited_auth).status_code
                     for n in range(8)]
            assert codes == [200] * 5 + [429] * 3
