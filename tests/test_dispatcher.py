"""The dispatcher against the real job store (SQLite): settle, fail with refund, retry on lost
workers, heartbeat progress, concurrency. Backends here are scripted so each path is exercised."""

from __future__ import annotations

import io
import threading
import time
from contextlib import contextmanager

import pytest
from PIL import Image
from sqlalchemy import select

from retouch.pipelines.errors import Cancelled
from retouch.serving.core.errors import InvalidInput
from retouch.serving.tasks import TASKS, parse_request
from retouch.serving.core.db import make_engine, make_session_factory, run_migrations, transaction
from retouch.serving.core.jobs import create_job, expire_leases, lease_next_job
from retouch.serving.core.storage import LocalStorage
from retouch.serving.core.tables import Account, Generation, LedgerEntry
from retouch.serving.dispatcher import Dispatcher, DispatcherConfig, ReplicaLost
from retouch.serving.replica_io import Outcome

START_CREDITS = 10_000
BODY = {"tool": "generator", "input": {"prompt": "a lamp"},
        "options": {"quality": "low", "output_format": "webp"}}


def png_bytes(color=(10, 200, 30), size=(24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


class ScriptedBackend:
    """Runs `script(job_id, request, images, seed, progress, is_cancelled)` for every job."""

    def __init__(self, script):
        self.script = script
        self.calls: list[str] = []

    def run(self, job_id, request, images, seed, progress, is_cancelled):
        self.calls.append(job_id)
        return Outcome(outputs=self.script(job_id, request, images, seed, progress,
                                           is_cancelled))


@pytest.fixture
def store(tmp_path):
    from retouch.serving.core.accounts import create_account
    from retouch.serving.core.keys import create_key

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    run_migrations(url)
    session_factory = make_session_factory(make_engine(url))
    with transaction(session_factory) as session:
        account = create_account(session, "acme", plan="pro", credits=START_CREDITS)
        key, _ = create_key(session, account.id)
    storage = LocalStorage(tmp_path / "files", "http://test")
    return session_factory, storage, account.id, key


def new_job(store, body=BODY) -> str:
    session_factory, _, _, key = store
    generation, _ = create_job(session_factory, key, parse_request(body), body)
    return generation.id


def dispatcher_for(store, backend, lease_seconds=5.0, concurrency=1) -> Dispatcher:
    session_factory, storage, _, _ = store
    config = DispatcherConfig(lease_seconds=lease_seconds, max_attempts=2,
                              concurrency=concurrency, poll_seconds=0.02)
    return Dispatcher(session_factory, storage, backend, config, worker_prefix="test")


def job_row(store, job_id) -> Generation:
    with store[0]() as session:
        return session.get_one(Generation, job_id)


def account_row(store) -> Account:
    with store[0]() as session:
        return session.get_one(Account, store[2])


def run_one(store, dispatcher, worker="w1"):
    job = lease_next_job(store[0], worker, dispatcher.config.lease_seconds)
    assert job is not None
    dispatcher.run_job(job, worker)
    return job.id


def test_completed_job_stores_outputs_and_frees_its_slot(store):
    outputs = [png_bytes((255, 0, 0)), png_bytes((0, 0, 255))]
    backend = ScriptedBackend(lambda *a: outputs)
    job_id = new_job(store)
    cost = job_row(store, job_id).cost_credits

    run_one(store, dispatcher_for(store, backend))

    job = job_row(store, job_id)
    assert job.status == "completed" and job.progress == 1.0
    assert job.output_keys == [f"outputs/{job_id}/1.webp", f"outputs/{job_id}/2.webp"]
    assert store[1].get(job.output_keys[1]) == outputs[1]
    assert store[1].media_type(job.output_keys[0]) == "image/webp"
    account = account_row(store)
    assert account.active_slots == 0 and account.credit_balance == START_CREDITS - cost


def test_backend_receives_the_stored_request_typed_and_its_seed(store):
    seen = {}

    def script(job_id, request, images, seed, progress, is_cancelled):
        seen.update(job_id=job_id, request=request, images=images, seed=seed)
        return [png_bytes()]

    body = {**BODY, "options": {**BODY["options"], "seed": 1234}}
    job_id = new_job(store, body)
    run_one(store, dispatcher_for(store, ScriptedBackend(script)))
    assert seen["job_id"] == job_id and seen["seed"] == 1234 and seen["images"] == {}
    assert seen["request"].tool == "generator" and seen["request"].input.prompt == "a lamp"


@pytest.mark.parametrize("error, code", [
    (InvalidInput("input.images[0]", "image is 8x8; too small"), "invalid_input"),
    (RuntimeError("CUDA out of memory at /srv/model.py:12"), "service_unavailable"),
    (Cancelled("the job was cancelled"), "service_unavailable"),
])
def test_pipeline_errors_fail_the_job_with_a_refund(store, error, code):
    def script(*_):
        raise error

    job_id = new_job(store)
    run_one(store, dispatcher_for(store, ScriptedBackend(script)))

    job = job_row(store, job_id)
    assert job.status == "failed" and job.error_code == code
    if code == "invalid_input":
        assert "input.images[0]" in job.error
    assert "/srv/model.py" not in job.error  # no internals leak into the job
    account = account_row(store)
    assert account.credit_balance == START_CREDITS and account.active_slots == 0
    with store[0]() as session:
        kinds = session.scalars(select(LedgerEntry.kind).where(
            LedgerEntry.generation_id == job_id).order_by(LedgerEntry.id)).all()
    assert kinds == ["reserve", "refund"]


def test_lost_worker_leaves_the_job_to_lease_expiry_then_retry_then_refund(store):
    def script(*_):
        raise ReplicaLost("replica died")

    lease = 0.3
    dispatcher = dispatcher_for(store, ScriptedBackend(script), lease_seconds=lease)
    job_id = new_job(store)

    run_one(store, dispatcher)
    assert job_row(store, job_id).status == "processing"  # not settled by a dead worker
    time.sleep(lease + 0.1)
    assert expire_leases(store[0], max_attempts=2) == 1
    assert job_row(store, job_id).status == "pending"  # retried

    run_one(store, dispatcher, worker="w2")
    time.sleep(lease + 0.1)
    expire_leases(store[0], max_attempts=2)
    job = job_row(store, job_id)
    assert job.status == "failed" and job.error_code == "service_unavailable"
    assert job.attempts == 2
    account = account_row(store)
    assert account.credit_balance == START_CREDITS and account.active_slots == 0


def test_heartbeats_record_progress_and_keep_the_lease(store):
    lease = 0.6
    observed = {}

    def script(job_id, body, images, seed, progress, is_cancelled):
        progress(0.5)
        time.sleep(lease * 1.8)  # longer than the lease: only heartbeats keep it
        observed["progress"] = job_row(store, job_id).progress
        observed["cancelled"] = is_cancelled()
        return [png_bytes()]

    dispatcher = dispatcher_for(store, ScriptedBackend(script), lease_seconds=lease)
    job_id = new_job(store)
    run_one(store, dispatcher)
    assert observed == {"progress": 0.5, "cancelled": False}
    assert job_row(store, job_id).status == "completed"


def test_worker_that_lost_its_lease_is_told_to_stop_and_settles_nothing(store):
    from sqlalchemy import update

    def script(job_id, body, images, seed, progress, is_cancelled):
        # Another worker takes the job over (as after a lease expiry and a new lease).
        with transaction(store[0]) as session:
            session.execute(update(Generation).where(Generation.id == job_id)
                            .values(lease_owner="other-worker"))
        deadline = time.monotonic() + 5
        while not is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.02)
        if is_cancelled():
            raise Cancelled("the job was cancelled")
        return [png_bytes()]

    job_id = new_job(store)
    run_one(store, dispatcher_for(store, ScriptedBackend(script), lease_seconds=0.3))

    row = job_row(store, job_id)
    assert row.status == "processing" and row.lease_owner == "other-worker"
    assert account_row(store).credit_balance < START_CREDITS  # still reserved for the new owner


def test_started_dispatcher_drains_the_queue_with_two_workers(store):
    running = []
    peak = []
    lock = threading.Lock()

    def script(*_):
        with lock:
            running.append(1)
            peak.append(len(running))
        time.sleep(0.15)
        with lock:
            running.pop()
        return [png_bytes()]

    job_ids = [new_job(store) for _ in range(4)]
    dispatcher = dispatcher_for(store, ScriptedBackend(script), concurrency=2)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(job_row(store, j).status == "completed" for j in job_ids):
                break
            time.sleep(0.05)
    finally:
        dispatcher.stop()
    assert [job_row(store, j).status for j in job_ids] == ["completed"] * 4
    assert max(peak) == 2
    assert account_row(store).active_slots == 0


class AnnouncedBackend(ScriptedBackend):
    """A scripted backend that batches like `InProcessBackend`: it records the dispatcher's
    announcements (`expecting`) and whether each job ran inside one."""

    def __init__(self, script):
        super().__init__(script)
        self.inside = threading.local()
        self.announced = 0
        self.ran_announced: list[bool] = []

    @contextmanager
    def expecting(self):
        self.announced += 1
        self.inside.active = True
        try:
            yield
        finally:
            self.inside.active = False

    def is_announced(self) -> bool:
        return getattr(self.inside, "active", False)

    def run(self, *args):
        self.ran_announced.append(self.is_announced())
        return super().run(*args)


def test_the_dispatcher_announces_each_lease_attempt_and_runs_the_job_inside_it(
        store, monkeypatch):
    """A batch forming in the backend waits for a job only while it is on its way: the
    worker announces before it leases and hands the job over inside the announcement."""
    from retouch.serving.core import jobs

    backend = AnnouncedBackend(lambda *_: [png_bytes()])
    leases_announced: list[bool] = []
    lease = jobs.lease_next_job

    def watched_lease(*args, **kwargs):
        leases_announced.append(backend.is_announced())
        return lease(*args, **kwargs)

    monkeypatch.setattr(jobs, "lease_next_job", watched_lease)
    job_ids = [new_job(store) for _ in range(2)]
    dispatcher = dispatcher_for(store, backend)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 15
        while not all(job_row(store, j).status == "completed" for j in job_ids):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        dispatcher.stop()
    assert backend.ran_announced == [True, True]
    assert leases_announced and all(leases_announced)
    assert backend.announced == len(leases_announced) > 2  # empty-queue attempts announced too


def test_in_process_backend_runs_the_real_engine_with_progress_and_cancel(tiny_store):
    from retouch.serving.runner import TaskRunner
    from retouch.serving.dispatcher import InProcessBackend

    backend = InProcessBackend(TaskRunner(tiny_store))
    request = parse_request(BODY)
    progress: list[float] = []
    outputs = backend.run("job-1", request, {}, 5, progress.append, lambda: False).outputs
    assert len(outputs) == 1
    with Image.open(io.BytesIO(outputs[0])) as image:
        assert image.format == "WEBP" and image.width == image.height == tiny_store.native_size
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 3
    again = backend.run("job-2", request, {}, 5, lambda f: None, lambda: False)
    assert again.outputs == outputs and again.model_revisions == tiny_store.revisions()
    assert again.model_revisions["base"].startswith("sha256:")

    with pytest.raises(Cancelled):
        backend.run("job-3", request, {}, 5, lambda f: None, lambda: True)
    upscale = parse_request({"tool": "upscaler", "input": {"image": {"upload_id": "u1"}}})
    with pytest.raises(InvalidInput, match="input.image"):
        backend.run("job-4", upscale, {"input.image": b"not an image"}, 5, lambda f: None,
                    lambda: False)


def test_serve_config_gives_each_family_its_resources(tmp_path):
    from pathlib import Path

    from retouch.serving.serve_config import (family_deployment, load_serve_config,
                                              startup_resources)

    example = Path(__file__).resolve().parent.parent / "serving" / "serve_config.yaml"
    config = load_serve_config(example)
    diffusion = family_deployment(config, "diffusion")
    assert diffusion["num_replicas"] == 1 and diffusion["max_ongoing_requests"] == 8
    assert diffusion["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.8}
    assert family_deployment(config, "upscaler")["ray_actor_options"]["num_gpus"] == 0.2
    assert startup_resources(config) == {"CPU": 3, "GPU": 1}  # one GPU node, shared
    embedded = load_serve_config(None)
    assert all(family_deployment(embedded, family)["num_replicas"] == 1 for family in
               ("diffusion", "upscaler"))
    assert startup_resources(embedded) == {}  # no GPU, no CPU reserved

    bad = tmp_path / "serve.yaml"
    bad.write_text(example.read_text().replace("build_upscaler_app", "build_video_app"))
    with pytest.raises(ValueError, match="expected one application with import_path "
                                         "'retouch.serving.deployments:build_upscaler_app'"):
        load_serve_config(bad)
    bad.write_text(example.read_text().replace("num_gpus: 0.2", "gpus: 0.2"))
    with pytest.raises(ValueError, match=r"unknown option\(s\) applications\[retouch-upscaler\]"
                                         r"\.deployments\[UpscalerDeployment\]"
                                         r"\.ray_actor_options\.gpus"):
        load_serve_config(bad)
    assert {spec.tool: spec.family for spec in TASKS if spec.surface == "wixma"} == {
        "generator": "diffusion", "editor": "diffusion", "photographer": "diffusion",
        "ai_filter": "diffusion", "upscaler": "upscaler"}
