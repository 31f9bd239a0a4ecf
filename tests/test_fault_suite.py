"""Fault suite: the process dying mid-settle, PostgreSQL restarted under load, a full or unwritable
disk, an S3 endpoint that never answers, and a graceful drain on SIGTERM. Each ends with the money
checked from the database: every job settled once (`completed` and charged, or `failed` and
refunded), none stuck, each balance equal to its credits minus completed costs and to its ledger
sum."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from retouch.serving.core.db import make_engine, make_session_factory
from retouch.serving.core.tables import Account, Generation, LedgerEntry
from retouch.serving.dispatcher import FAULT_EXIT_CODE, STORAGE_UNAVAILABLE

from api_fixtures import (GENERATOR_BODY, api_for, assert_error, image_bytes, make_settings,
                          settle)
from db_fixtures import BACKENDS, postgres_schema
from serve_process import cli_json, free_port, retouch_serve

pytestmark = pytest.mark.timeout(240)

CREDITS = 10_000
SERVE_ARGS = ("--executor", "inprocess", "--profile", "tiny", "--device", "cpu")


def body(n: int, quality: str = "low") -> dict:
    return {"tool": "generator", "input": {"prompt": f"a lamp, take {n}"},
            "options": {"quality": quality, "seed": n}}


def check_money(database_url: str, credits: int = CREDITS) -> dict[str, Generation]:
    """Every job terminal, reserved once, refunded once iff failed; balances add up."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            jobs = {job.id: job for job in session.scalars(select(Generation))}
            assert all(job.status in ("completed", "failed") for job in jobs.values()), \
                [(job.id, job.status) for job in jobs.values()]
            for job in jobs.values():
                kinds = sorted(session.scalars(select(LedgerEntry.kind)
                                               .where(LedgerEntry.generation_id == job.id)))
                assert kinds == (["refund", "reserve"] if job.status == "failed"
                                 else ["reserve"]), (job.id, job.status, kinds)
            for account in session.scalars(select(Account)):
                completed = sum(job.cost_credits for job in jobs.values()
                                if job.account_id == account.id and job.status == "completed")
                ledger = session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0))
                                        .where(LedgerEntry.account_id == account.id))
                assert account.credit_balance == credits - completed
                assert ledger == account.credit_balance
                assert account.active_slots == 0
            return jobs
    finally:
        engine.dispose()


def wait_settled(http: httpx.Client, secret: str, job_ids, deadline_s: float = 120) -> dict:
    deadline = time.monotonic() + deadline_s
    states: dict = {}
    while time.monotonic() < deadline:
        states = {job_id: http.get(f"/api/v1/generations/{job_id}",
                                   headers={"Authorization": f"Bearer {secret}"})
                  .json()["generation"] for job_id in job_ids}
        if all(s["status"] in ("completed", "failed") for s in states.values()):
            return states
        time.sleep(0.3)
    raise AssertionError(f"not settled: {states}")


def wait_status(http: httpx.Client, secret: str, job_id: str, statuses, deadline_s=90) -> dict:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        job = http.get(f"/api/v1/generations/{job_id}",
                       headers={"Authorization": f"Bearer {secret}"}).json()["generation"]
        if job["status"] in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"{job_id} never reached {statuses}")


def account_secret(home) -> str:
    account = cli_json(home, "accounts", "create", "--name", "a", "--plan", "pro", "--credits",
                       str(CREDITS))
    return cli_json(home, "keys", "create", "--account", account["id"])["secret"]


def create(http: httpx.Client, secret: str, payload: dict, idem: str | None = None):
    headers = {"Authorization": f"Bearer {secret}"}
    if idem:
        headers["Idempotency-Key"] = idem
    return http.post("/api/v1/generations", json=payload, headers=headers)


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/retouch.db"
        return
    with postgres_schema("faults") as url:
        yield url


# ---- 1. the process dies mid-settle ------------------------------------------------------------
@pytest.mark.parametrize("point", ["outputs_stored", "settle_commit"])
def test_a_process_killed_mid_settle_settles_each_job_exactly_once(
        tmp_path, tiny_cache_dir, database_url, point, monkeypatch):
    from retouch.models.tiny import build_tiny_models

    build_tiny_models(tiny_cache_dir)
    monkeypatch.setenv("RETOUCH_DATABASE_URL", database_url)
    env = {"RETOUCH_MODEL_CACHE": str(tiny_cache_dir), "RETOUCH_LEASE_SECONDS": "2",
           "RETOUCH_DISPATCHER_CONCURRENCY": "1"}
    with retouch_serve(tmp_path, *SERVE_ARGS, env={**env, "RETOUCH_FAULT_EXIT_AT": point}) \
            as serve, httpx.Client(base_url=serve.base_url, timeout=20) as http:
        secret = account_secret(tmp_path)
        job_ids = [create(http, secret, body(n)).json()["generation"]["id"] for n in range(3)]
        assert serve.process.wait(90) == FAULT_EXIT_CODE  # died settling the first job
    with retouch_serve(tmp_path, *SERVE_ARGS, env=env) as serve, \
            httpx.Client(base_url=serve.base_url, timeout=20) as http:
        states = wait_settled(http, secret, job_ids)
        assert all(s["status"] == "completed" for s in states.values()), states
        for s in states.values():  # the outputs the completed job names are there
            assert http.get(s["output_url"]).status_code == 200
    jobs = check_money(database_url)
    assert max(job.attempts for job in jobs.values()) == 2  # the interrupted one ran again


# ---- 2. PostgreSQL restarted under load --------------------------------------------------------
def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else shutil.which("pg_ctl") and os.path.dirname(
        shutil.which("pg_ctl"))


@contextmanager
def private_postgres(tmp_path):
    """A throwaway PostgreSQL cluster on a free loopback port (never the shared server)."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    import tempfile

    # Its own folder outside pytest's (which other users cannot enter); removed after.
    root = Path(tempfile.mkdtemp(prefix="retouch-pg-"))
    data, port = root / "data", free_port()
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if not _has_user("postgres"):
            pytest.skip("running as root without a postgres user")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    done = subprocess.run([*as_user, f"{bindir}/initdb", "-D", str(data), "-U", "postgres",
                           "--auth=trust", "-E", "UTF8"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr

    def pg_ctl(*args: str) -> None:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-w", "-t", "60",
                        "-l", str(root / "pg.log"), *args], check=True,
                       capture_output=True, timeout=90)

    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off"
    start = lambda: pg_ctl("start", "-o", options)  # noqa: E731
    start()
    try:
        yield (f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
               lambda: pg_ctl("stop", "-m", "fast"), start)
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "stop", "-m",
                        "immediate"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_postgres_restarted_under_load_answers_503_then_recovers(tmp_path, tiny_cache_dir,
                                                                 monkeypatch):
    from retouch.models.tiny import build_tiny_models

    build_tiny_models(tiny_cache_dir)
    with private_postgres(tmp_path) as (url, stop_pg, start_pg):
        monkeypatch.setenv("RETOUCH_DATABASE_URL", url)
        home = tmp_path / "home"
        home.mkdir()
        env = {"RETOUCH_MODEL_CACHE": str(tiny_cache_dir), "RETOUCH_LEASE_SECONDS": "3",
               "RETOUCH_DISPATCHER_CONCURRENCY": "2"}
        with retouch_serve(home, *SERVE_ARGS, env=env) as serve, \
                httpx.Client(base_url=serve.base_url, timeout=15) as http:
            secret = account_secret(home)
            accepted, down_answers, n = {}, [], 0
            for _ in range(4):  # jobs in flight when the database goes away
                n += 1
                accepted[f"pg-{n}"] = create(http, secret, body(n), f"pg-{n}").json()
            stop_pg()
            down_until = time.monotonic() + 3
            while time.monotonic() < down_until:  # creates and reads while it is down
                n += 1
                for call in (lambda: create(http, secret, body(n), f"pg-{n}"),
                             lambda: http.get("/api/v1/credits",
                                              headers={"Authorization": f"Bearer {secret}"})):
                    started = time.monotonic()
                    try:
                        down_answers.append((call(), time.monotonic() - started))
                    except httpx.HTTPError as exc:  # no answer in time
                        down_answers.append((exc, time.monotonic() - started))
            start_pg()
            recovered = None
            recover_deadline = time.monotonic() + 30
            while recovered is None and time.monotonic() < recover_deadline:
                n += 1
                response = create(http, secret, body(n), f"pg-{n}")
                if response.status_code == 201:
                    recovered = response
                else:
                    assert_error(response, 503, "service_unavailable")
                    time.sleep(0.2)
            assert recovered is not None, "no create succeeded after PostgreSQL came back"
            assert serve.process.poll() is None  # no restart
            job_ids = [r["generation"]["id"] for r in accepted.values()]
            job_ids.append(recovered.json()["generation"]["id"])
            states = wait_settled(http, secret, job_ids)
            assert all(s["status"] == "completed" for s in states.values()), \
                [(s["status"], s["error_code"], s["error"]) for s in states.values()]
        assert down_answers
        print("while down:", [(getattr(r, "status_code", repr(r)), round(t, 1))
                              for r, t in down_answers])
        for response, seconds in down_answers:
            assert isinstance(response, httpx.Response), (response, seconds)
            assert_error(response, 503, "service_unavailable")
            assert seconds < 10
        check_money(url)


# ---- 3. a full disk or an unwritable output folder -----------------------------------------------
@pytest.mark.parametrize("error, reason", [
    (errno.ENOSPC, "the disk is full"),
    (errno.EACCES, "it cannot be written (Permission denied)"),  # a folder we may not write
    (errno.EROFS, "it cannot be written (Read-only file system)"),
], ids=["full", "unwritable", "read-only"])
def test_an_unwritable_disk_fails_the_job_refunded_and_refuses_uploads_then_recovers(
        tmp_path, tiny_store, error, reason):
    from retouch.serving.executor import InProcessExecutor
    from retouch.serving.runner import TaskRunner

    failing = threading.Event()
    executor = lambda services: InProcessExecutor(  # noqa: E731
        services, lambda: TaskRunner(tiny_store))
    settings = make_settings(tmp_path)
    with api_for(settings, executor=executor) as api:
        storage = api.services.storage
        real_write = storage._write

        def write(path, data):
            if failing.is_set():
                raise OSError(error, os.strerror(error), str(path))
            real_write(path, data)

        storage._write = write
        _, secret = api.key(api.account(plan="plus", credits=1000))
        failing.set()
        refused = api.client.post("/api/v1/uploads", headers=api.headers(secret),
                                  files={"file": ("a.png", image_bytes(), "image/png")})
        refusal = assert_error(refused, 503, "service_unavailable")
        assert refusal["message"].endswith(reason), refusal
        job = settle(api, secret, GENERATOR_BODY)
        assert job["status"] == "failed" and job["error_code"] == STORAGE_UNAVAILABLE, job
        assert "refunded" in job["error"]
        assert api.client.get("/healthz").status_code == 200
        assert not list((tmp_path / "files").rglob("*.part"))  # no half-written files
        failing.clear()
        assert api.upload(secret)["id"]
        again = settle(api, secret, GENERATOR_BODY)
        assert again["status"] == "completed"
        credits = api.client.get("/api/v1/credits", headers=api.headers(secret)).json()
        assert credits["credits"]["balance"] == 1000 - again["cost_credits"]
    check_money(settings.resolved_database_url, credits=1000)



# ---- 4. an S3 endpoint that never answers --------------------------------------------------------
@contextmanager
def silent_server():
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_an_s3_endpoint_that_never_answers_fails_within_the_timeout(tmp_path, tiny_store,
                                                                   monkeypatch):
    from retouch.serving.executor import InProcessExecutor
    from retouch.serving.runner import TaskRunner

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")):
        monkeypatch.setenv(name, value)
    executor = lambda services: InProcessExecutor(  # noqa: E731
        services, lambda: TaskRunner(tiny_store))
    timeout, attempts = 0.5, 2
    bound = 2 * timeout * attempts * 2 + 5  # head_bucket + put_object, each retried, + slack
    with silent_server() as endpoint:
        settings = make_settings(tmp_path, storage="s3", s3_endpoint_url=endpoint,
                                 s3_connect_timeout_seconds=timeout,
                                 s3_read_timeout_seconds=timeout, s3_max_attempts=attempts)
        with api_for(settings, executor=executor) as api:
            _, secret = api.key(api.account(plan="plus", credits=1000))
            started = time.monotonic()
            refused = api.client.post("/api/v1/uploads", headers=api.headers(secret),
                                      files={"file": ("a.png", image_bytes(), "image/png")})
            assert time.monotonic() - started < bound
            assert "object storage is unavailable" in assert_error(
                refused, 503, "service_unavailable")["message"]
            job = settle(api, secret, GENERATOR_BODY)
            assert job["status"] == "failed" and job["error_code"] == STORAGE_UNAVAILABLE, job
            assert api.client.get("/healthz").status_code == 200
            credits = api.client.get("/api/v1/credits", headers=api.headers(secret)).json()
            assert credits["credits"]["balance"] == 1000
            assert credits["credits"]["queue"]["active"] == 0
    check_money(settings.resolved_database_url, credits=1000)


# ---- 5. graceful drain on SIGTERM ----------------------------------------------------------------
def test_sigterm_drains_running_jobs_and_requeues_the_rest(tmp_path, tiny_cache_dir,
                                                          database_url, monkeypatch):
    from retouch.models.tiny import build_tiny_models

    build_tiny_models(tiny_cache_dir)
    monkeypatch.setenv("RETOUCH_DATABASE_URL", database_url)
    env = {"RETOUCH_MODEL_CACHE": str(tiny_cache_dir), "RETOUCH_DISPATCHER_CONCURRENCY": "1"}

    # A long grace period: the running job finishes, the server stops accepting, exits 0.
    with retouch_serve(tmp_path, *SERVE_ARGS, "--drain-seconds", "90", env=env) as serve, \
            httpx.Client(base_url=serve.base_url, timeout=20) as http:
        secret = account_secret(tmp_path)
        running = create(http, secret, body(1)).json()["generation"]["id"]
        queued = create(http, secret, body(2)).json()["generation"]["id"]
        wait_status(http, secret, running, ("processing", "completed"))
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(120) == 0
        with pytest.raises(httpx.ConnectError):
            create(http, secret, body(3))

    # A short one: the job (each step slowed to 1 s) is stopped and put back to pending, lease
    # cleared.
    with retouch_serve(tmp_path, *SERVE_ARGS, "--drain-seconds", "0.5",
                       env={**env, "RETOUCH_FAULT_STEP_DELAY_S": "1"}) as serve, \
            httpx.Client(base_url=serve.base_url, timeout=20) as http:
        long_job = create(http, secret, body(4, quality="high")).json()["generation"]["id"]
        wait_status(http, secret, long_job, ("processing",))
        stopped = time.monotonic()
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(60) == 0
        drained_in = time.monotonic() - stopped
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            jobs = {job.id: job for job in session.scalars(select(Generation))}
    finally:
        engine.dispose()
    assert jobs[running].status == "completed"
    assert jobs[queued].status in ("pending", "completed")
    assert jobs[long_job].status == "pending", jobs[long_job].status
    assert jobs[long_job].lease_owner is None and jobs[long_job].attempts == 0
    assert not [job.id for job in jobs.values() if job.status == "processing"]
    assert drained_in < 30

    # A restarted server runs what was requeued; money adds up.
    with retouch_serve(tmp_path, *SERVE_ARGS, env=env) as serve, \
            httpx.Client(base_url=serve.base_url, timeout=20) as http:
        states = wait_settled(http, secret, [queued, long_job], deadline_s=150)
        assert all(s["status"] == "completed" for s in states.values()), states
    check_money(database_url)
