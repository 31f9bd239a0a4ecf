"""Crash suite: `kill -9` of the whole `retouch serve` process group while 40 creates are in
flight and jobs are running, then a restart on the same data. Every job that got a 2xx settles
(none stuck), every request that got no answer made exactly one job or none (its
Idempotency-Key replay tells), and money adds up: each account's balance is its credits minus
its completed jobs' `cost_credits`, and equals the sum of its ledger. SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from retouch.serving.core.db import make_engine, make_session_factory
from retouch.serving.core.tables import Account, Generation, LedgerEntry

from db_fixtures import BACKENDS, postgres_schema
from serve_process import cli_json, retouch_serve

pytestmark = pytest.mark.timeout(300)

ACCOUNTS, CREATES_EACH, CREDITS = 4, 10, 10_000
LEASE_SECONDS = 2


def body(n: int) -> dict:
    return {"tool": "generator", "input": {"prompt": f"a lamp, take {n}"},
            "options": {"quality": "low", "seed": n}}


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/retouch.db"
        return
    with postgres_schema("crash") as url:
        yield url


def test_kill_9_mid_flight_loses_no_job_and_no_credit(tmp_path, tiny_cache_dir, database_url,
                                                     monkeypatch):
    from retouch.models.tiny import build_tiny_models

    build_tiny_models(tiny_cache_dir)
    monkeypatch.setenv("RETOUCH_DATABASE_URL", database_url)  # the CLI and both servers
    env = {"RETOUCH_MODEL_CACHE": str(tiny_cache_dir),
           "RETOUCH_LEASE_SECONDS": str(LEASE_SECONDS), "RETOUCH_DISPATCHER_CONCURRENCY": "2"}
    serve_args = ("--executor", "inprocess", "--profile", "tiny", "--device", "cpu")
    answered: dict[str, httpx.Response] = {}  # idempotency key -> response
    unanswered: set[str] = set()
    keys: dict[str, str] = {}  # idempotency key -> API key secret

    with retouch_serve(tmp_path, *serve_args, env=env) as serve:
        secrets = []
        for n in range(ACCOUNTS):
            account = cli_json(tmp_path, "accounts", "create", "--name", f"a{n}", "--plan",
                               "pro", "--credits", str(CREDITS))
            secrets.append(cli_json(tmp_path, "keys", "create", "--account",
                                    account["id"])["secret"])
        enough = threading.Event()

        def create(n: int) -> None:
            idem, secret = f"crash-{n}", secrets[n % ACCOUNTS]
            keys[idem] = secret
            try:
                response = httpx.post(f"{serve.base_url}/api/v1/generations", json=body(n),
                                      headers={"Authorization": f"Bearer {secret}",
                                               "Idempotency-Key": idem}, timeout=20)
                answered[idem] = response
                if len(answered) >= 12:
                    enough.set()
            except httpx.HTTPError:
                unanswered.add(idem)

        with ThreadPoolExecutor(16) as pool:
            for n in range(ACCOUNTS * CREATES_EACH):
                pool.submit(create, n)
            enough.wait(60)
            os.killpg(serve.process.pid, signal.SIGKILL)  # the whole group, mid-flight
        serve.process.wait(10)

    assert all(r.status_code < 500 for r in answered.values())
    accepted = {idem: r.json()["generation"]["id"] for idem, r in answered.items()
                if r.status_code in (200, 201)}
    assert accepted, "no create was answered before the kill"

    with retouch_serve(tmp_path, *serve_args, env=env) as serve, \
            httpx.Client(base_url=serve.base_url, timeout=20) as http:
        # A request that got no answer: its replay finds the one job it made, or makes it now.
        for idem in sorted(unanswered):
            replay = http.post("/api/v1/generations", json=body(int(idem.split("-")[1])),
                               headers={"Authorization": f"Bearer {keys[idem]}",
                                        "Idempotency-Key": idem})
            assert replay.status_code in (200, 201, 429), replay.text
            if replay.status_code != 429:
                accepted[idem] = replay.json()["generation"]["id"]
        deadline = time.monotonic() + 150
        states = {}
        while time.monotonic() < deadline:
            states = {job_id: http.get(f"/api/v1/generations/{job_id}",
                                       headers={"Authorization": f"Bearer {keys[idem]}"})
                      .json()["generation"] for idem, job_id in accepted.items()}
            if all(s["status"] in ("completed", "failed") for s in states.values()):
                break
            time.sleep(0.5)
        stuck = [s for s in states.values() if s["status"] not in ("completed", "failed")]
        assert not stuck, stuck

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            jobs = list(session.scalars(select(Generation)))
            # One job per idempotency key at most: no request made two.
            assert len(jobs) == len({job.request_hash + job.api_key_id for job in jobs})
            assert {job.id for job in jobs} >= set(accepted.values())
            assert all(job.status in ("completed", "failed") for job in jobs)
            for account in session.scalars(select(Account)):
                completed = sum(job.cost_credits for job in jobs
                                if job.account_id == account.id and job.status == "completed")
                ledger = session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0))
                                        .where(LedgerEntry.account_id == account.id))
                assert account.credit_balance == CREDITS - completed
                assert ledger == account.credit_balance
                assert account.active_slots == 0
    finally:
        engine.dispose()
