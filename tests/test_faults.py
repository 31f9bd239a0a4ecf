"""Bad jobs never wedge a replica: an out-of-memory job fails alone with a stable code and a
refund, the accelerator cache is freed and the next job runs; a replica that keeps failing (out of
memory or any unexpected exception) fails Serve's health check until a job succeeds; a job past
its tool's deadline is stopped and refunded."""

from __future__ import annotations

import time

import pytest

import torch

from retouch.pipelines.errors import Cancelled, PipelineInputError
from retouch.serving.core.errors import InvalidInput
from retouch.serving.deployments import DiffusionDeployment, EngineConfig
from retouch.serving.executor import InProcessExecutor
from retouch.serving.replica_io import OutOfMemory
from retouch.serving.runner import TaskRunner
from retouch.serving.tasks import parse_request

from api_fixtures import api_for, make_settings, settle

GENERATOR = {"tool": "generator", "input": {"prompt": "a lamp"}, "options": {"quality": "low"}}


def balance(api, secret) -> dict:
    return api.client.get("/api/v1/credits", headers=api.headers(secret)).json()["credits"]


def test_an_out_of_memory_job_fails_alone_refunded_and_the_next_job_runs(tmp_path, tiny_store):
    runner = TaskRunner(tiny_store, fault_oom_calls=(2,))
    executor = lambda services: InProcessExecutor(services, lambda: runner)  # noqa: E731
    with api_for(make_settings(tmp_path), executor=executor) as api:
        _, secret = api.key(api.account(plan="plus", credits=1000))
        first, second, third = (settle(api, secret, GENERATOR) for _ in range(3))
        assert first["status"] == third["status"] == "completed"
        assert second["status"] == "failed" and second["error_code"] == "out_of_memory"
        assert "refunded" in second["error"]
        credits = balance(api, secret)
        assert credits["balance"] == 1000 - first["cost_credits"] - third["cost_credits"]
        assert credits["queue"]["active"] == 0
    assert runner.healthy() and runner.pipeline_calls == 3


def test_a_replica_failing_every_job_reports_itself_unhealthy(tiny_store):
    runner = TaskRunner(tiny_store, fault_oom_calls=(1, 2, 3))
    request = parse_request(GENERATOR)
    for _ in range(3):
        with pytest.raises(OutOfMemory):
            runner.run_job(request, {}, 1, lambda f: None, lambda: False)
    assert not runner.healthy()
    runner.run_job(request, {}, 1, lambda f: None, lambda: False)  # call 4: no fault
    assert runner.healthy()


def run_one(runner: TaskRunner) -> None:
    runner.run_job(parse_request(GENERATOR), {}, 1, lambda f: None, lambda: False)


def test_a_replica_failing_every_job_fails_serves_health_check_until_a_job_succeeds(
        tiny_store, monkeypatch):
    runner = TaskRunner(tiny_store, fault_oom_calls=(1, 2, 3))
    # The deployment class as Serve instantiates it, around this runner (no Ray cluster needed).
    monkeypatch.setattr(EngineConfig, "build_runner", lambda self: runner)
    replica = DiffusionDeployment(EngineConfig())
    replica.check_health()
    for _ in range(3):
        with pytest.raises(OutOfMemory):
            run_one(runner)
    with pytest.raises(RuntimeError, match="3 jobs in a row failed"):
        replica.check_health()
    run_one(runner)  # call 4: no fault
    replica.check_health()


def test_each_out_of_memory_frees_the_accelerator_cache_once(tiny_store, monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    runner = TaskRunner(tiny_store, fault_oom_calls=(1, 3))
    for call, expected in ((1, 1), (2, 1), (3, 2), (4, 2)):
        if call in runner.fault_oom_calls:
            with pytest.raises(OutOfMemory):
                run_one(runner)
        else:
            run_one(runner)
        assert len(emptied) == expected, call


class FaultyStore:
    """The tiny store, except that while `fault` is set every model lookup raises it."""

    def __init__(self, store):
        self._store, self.fault = store, None

    def __getattr__(self, name):
        if self.fault is not None:
            raise self.fault
        return getattr(self._store, name)


def test_unexpected_exceptions_count_toward_the_health_check_bad_input_and_cancel_do_not(
        tiny_store):
    store = FaultyStore(tiny_store)
    runner = TaskRunner(store)
    for fault, raised, failures in (
            (RuntimeError("device lost"), RuntimeError, 1),
            (RuntimeError("device lost"), RuntimeError, 2),
            (PipelineInputError("input.prompt", "unusable"), InvalidInput, 2),  # the job's fault
            (Cancelled(), Cancelled, 2),
            (RuntimeError("device lost"), RuntimeError, 3)):
        store.fault = fault
        with pytest.raises(raised):
            run_one(runner)
        assert runner.consecutive_failures == failures, fault
    assert not runner.healthy()
    store.fault = None
    run_one(runner)
    assert runner.healthy() and runner.consecutive_failures == 0


def test_a_job_past_its_tools_deadline_is_stopped_and_refunded(tmp_path, tiny_store):
    settings = make_settings(tmp_path, job_deadlines_s={"photographer": 0.2})
    executor = lambda services: InProcessExecutor(  # noqa: E731
        services, lambda: TaskRunner(tiny_store))
    with api_for(settings, executor=executor) as api:
        _, secret = api.key(api.account(plan="plus", credits=5000))
        upload = api.upload(secret)
        started = time.monotonic()
        job = settle(api, secret, {"tool": "photographer",
                                   "input": {"main_image": {"upload_id": upload["id"]}},
                                   "options": {"mode": "carousel", "quality": "high"}})
        assert job["status"] == "failed" and job["error_code"] == "deadline_exceeded", job
        assert time.monotonic() - started < 30
        quick = settle(api, secret, GENERATOR)  # other tools have no deadline
        assert quick["status"] == "completed"
        credits = balance(api, secret)
        assert credits["balance"] == 5000 - quick["cost_credits"]
        assert credits["queue"]["active"] == 0
