"""Job creation against the bare stack, side by side in one run.

    python -m retouch.scripts.bench_create [--creates 300] [--rounds 3] [--database-url URL]

- retouch: `POST /api/v1/generations` through the app (auth, validation, pricing, atomic slot +
  budget + credit reservation, ledger and job insert; no executor, so jobs stay pending).
- baseline: a minimal FastAPI app on the same database doing the core of it in ONE transaction
  (read the key, conditional UPDATE of the balance, INSERT the job), with SQLAlchemy Core.
Both are driven by the same in-process client, alternating rounds; the best round of each is
reported with the ratio. `--json` prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path


def baseline_app(database_url: str):
    """The bare stack: FastAPI + one SQLAlchemy Core transaction per create."""
    from fastapi import FastAPI, Header, HTTPException
    from sqlalchemy import (Column, Integer, MetaData, String, Table, create_engine, insert,
                            select, update)

    from retouch.serving.core.db import make_engine

    engine = make_engine(database_url) if database_url else create_engine("sqlite://")
    meta = MetaData()
    keys = Table("bench_keys", meta, Column("secret", String, primary_key=True),
                 Column("account", String))
    accounts = Table("bench_accounts", meta, Column("id", String, primary_key=True),
                     Column("balance", Integer))
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

    return app


def retouch_app(home: Path, database_url: str | None, creates: int):
    from retouch.scripts.bench_serving import _account_key
    from retouch.serving.app import build_app
    from retouch.serving.core.accounts import plan_slot_limit
    from retouch.serving.services import build_services
    from retouch.serving.settings import Settings

    settings = Settings(home=home, database_url=database_url, executor="inprocess")
    services = build_services(settings)
    # Jobs stay pending and hold their slots: enough pro accounts that slots never answer.
    per_account = plan_slot_limit("pro")
    secrets_ = [_account_key(services) for _ in range(-(-creates // per_account) + 1)]
    return build_app(settings, services=services), secrets_, per_account


def rate(client, path: str, headers_for, creates: int, offset: int) -> float:
    started = time.perf_counter()
    for i in range(creates):
        response = client.post(path, headers=headers_for(offset + i), json={
            "tool": "generator", "input": {"prompt": f"product shot {offset + i}"},
            "options": {"quality": "low"}})
        assert response.status_code == 201, response.text
    return creates / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    from fastapi.testclient import TestClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="retouch-bench-create-"))
    total = args.creates * (args.rounds + 1)
    app, secrets_, per_account = retouch_app(home, args.database_url, total)
    bare = baseline_app(args.database_url or f"sqlite:///{home / 'baseline.db'}")
    ours, theirs = [], []
    with TestClient(app) as client, TestClient(bare) as bare_client:
        def ours_headers(i: int) -> dict:
            return {"Authorization": f"Bearer {secrets_[i // per_account]}"}

        rate(client, "/api/v1/generations", ours_headers, 5, total - 5)  # warm-up
        rate(bare_client, "/jobs", lambda i: {"Authorization": "Bearer k1"}, 5, 0)
        for n in range(args.rounds):
            theirs.append(rate(bare_client, "/jobs", lambda i: {"Authorization": "Bearer k1"},
                               args.creates, n * args.creates))
            ours.append(rate(client, "/api/v1/generations", ours_headers, args.creates,
                             n * args.creates))
    result = {"create_per_s": max(ours), "baseline_create_per_s": max(theirs),
              "ratio": max(ours) / max(theirs), "creates_per_round": args.creates,
              "rounds": args.rounds, "database": "postgresql" if args.database_url else "sqlite"}
    print(f"| retouch create | {result['create_per_s']:.0f} jobs/s |")
    print(f"| baseline (FastAPI + one Core transaction) | "
          f"{result['baseline_create_per_s']:.0f} jobs/s |")
    print(f"| ratio | {result['ratio']:.2f}× |")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
