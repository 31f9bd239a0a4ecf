"""Cancel: a pending job never starts, a running one stops at its next denoising step, both end
`failed`/`canceled` with the slot freed and the credits refunded in one transaction; a finished
job answers 409 and nothing changes; another account's job is 404. Also AIXpose pictures, the
MCP tool, the dashboard button and a job cancelled alone inside a dynamic batch."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select

from retouch.pipelines.errors import Cancelled
from retouch.serving.core import jobs
from retouch.serving.core.db import transaction
from retouch.serving.core.keys import create_key
from retouch.serving.core.tables import ApiKey, Generation, LedgerEntry, WebhookDelivery
from retouch.serving.executor import InProcessExecutor

from api_fixtures import (GENERATOR_BODY, api_for, assert_error, finish_next_job, image_bytes,
                          make_settings)
from live_fixtures import STEP_TIMEOUT_S, GatedRunner, InstantRunner
from mcp_fixtures import mcp_session, serve_app, tool_error, tool_json
from test_dashboard_pages import Dashboard

START = 1000


def credits_of(api, secret) -> dict:
    return api.client.get("/api/v1/credits", headers=api.headers(secret)).json()["credits"]


def ledger_of(api, job_id) -> list[tuple[str, int, str | None]]:
    with api.services.session_factory() as session:
        return [(e.kind, e.amount, e.memo) for e in session.scalars(
            select(LedgerEntry).where(LedgerEntry.generation_id == job_id)
            .order_by(LedgerEntry.id))]


def cancel(api, secret, job_id):
    return api.client.post(f"/api/v1/generations/{job_id}/cancel", headers=api.headers(secret))


def assert_refunded(api, secret, key_id, job_id) -> None:
    credits = credits_of(api, secret)
    assert credits["balance"] == START and credits["queue"]["active"] == 0
    assert credits["key"]["monthly"]["used"] == 0 and credits["key"]["total"]["used"] == 0
    assert ledger_of(api, job_id) == [("reserve", -40, "generator generation"),
                                      ("refund", 40, "refund: canceled")]
    with api.services.session_factory() as session:
        assert session.get(ApiKey, key_id).total_used == 0


def test_a_cancelled_pending_job_never_starts_and_is_refunded(tmp_path):
    runner = InstantRunner(image_bytes(8, 8))
    with api_for(make_settings(tmp_path)) as api:  # the executor starts after the cancel
        key_id, secret = api.key(api.account(credits=START))
        job_id = api.generate(secret, GENERATOR_BODY).json()["generation"]["id"]
        assert credits_of(api, secret)["queue"]["active"] == 1

        response = cancel(api, secret, job_id)
        assert response.status_code == 200, response.text
        generation = response.json()["generation"]
        assert generation["status"] == "failed" and generation["error_code"] == "canceled"
        assert generation["error"] and generation["output_url"] is None
        assert_refunded(api, secret, key_id, job_id)

        executor = InProcessExecutor(api.services, lambda: runner)
        executor.start()
        try:
            other = api.generate(secret, GENERATOR_BODY).json()["generation"]["id"]
            deadline = time.monotonic() + STEP_TIMEOUT_S
            while api.client.get(f"/api/v1/generations/{other}", headers=api.headers(secret)
                                 ).json()["generation"]["status"] != "completed":
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            executor.stop()
        with api.services.session_factory() as session:
            job = session.get(Generation, job_id)
            assert (job.status, job.attempts, job.started_at) == ("failed", 0, None)


def test_a_running_job_stops_at_its_next_step_and_is_refunded_at_once(tmp_path, tiny_store):
    runner = GatedRunner(tiny_store)
    executor = lambda services: InProcessExecutor(services, lambda: runner)  # noqa: E731
    with api_for(make_settings(tmp_path), executor=executor) as api:
        key_id, secret = api.key(api.account(credits=START))
        job_id = api.generate(secret, GENERATOR_BODY).json()["generation"]["id"]
        assert runner.at_first_step.wait(STEP_TIMEOUT_S)  # processing, inside step 1

        response = cancel(api, secret, job_id)
        assert response.status_code == 200, response.text
        assert response.json()["generation"]["error_code"] == "canceled"
        assert_refunded(api, secret, key_id, job_id)  # before the replica even noticed

        runner.release.set()
        assert runner.finished.wait(STEP_TIMEOUT_S)
        total = runner.steps[0][1]
        assert total > 1 and runner.steps == [(1, total)]  # no step ran after the cancel
        assert isinstance(runner.outcomes[0].error, Cancelled)
        time.sleep(0.2)  # the dispatcher settles nothing more
        with api.services.session_factory() as session:
            job = session.get(Generation, job_id)
            assert (job.status, job.error_code, job.output_keys) == ("failed", "canceled", [])
        assert not api.services.storage.exists(f"outputs/{job_id}/1.png")
        assert_refunded(api, secret, key_id, job_id)  # refunded exactly once


def test_cancelling_a_finished_job_is_a_conflict_and_changes_nothing(api):
    _, secret = api.key(api.account(credits=START))
    job_id = api.generate(secret, GENERATOR_BODY).json()["generation"]["id"]
    finish_next_job(api)
    before = credits_of(api, secret)
    error = assert_error(cancel(api, secret, job_id), 409, "invalid_input", "id")
    assert error["details"]["status"] == "completed"
    assert "already completed" in error["message"]
    assert credits_of(api, secret) == before
    assert [kind for kind, _, _ in ledger_of(api, job_id)] == ["reserve"]
    fetched = api.client.get(f"/api/v1/generations/{job_id}", headers=api.headers(secret))
    assert fetched.json()["generation"]["status"] == "completed"

    cancelled = api.generate(secret, GENERATOR_BODY).json()["generation"]["id"]
    assert cancel(api, secret, cancelled).status_code == 200
    error = assert_error(cancel(api, secret, cancelled), 409, "invalid_input", "id")
    assert error["details"]["status"] == "failed"
    assert [kind for kind, _, _ in ledger_of(api, cancelled)] == ["reserve", "refund"]


def test_only_the_owner_with_the_create_scope_can_cancel(api):
    _, owner = api.key()
    _, stranger = api.key()
    _, reader = api.key(scopes=["generations:read"])
    job_id = api.generate(owner, GENERATOR_BODY).json()["generation"]["id"]
    assert_error(cancel(api, stranger, job_id), 404, "invalid_input", "id")
    assert_error(cancel(api, reader, job_id), 403, "forbidden")
    assert_error(cancel(api, owner, "no-such-job"), 404, "invalid_input", "id")
    with api.services.session_factory() as session:
        assert session.get(Generation, job_id).status == "pending"


def test_a_job_cancelled_alone_in_a_batch_stops_while_the_other_completes(tmp_path, tiny_store):
    runner = GatedRunner(tiny_store)
    settings = make_settings(tmp_path, max_batch_size=2, batch_wait_timeout_s=5.0)
    executors: list[InProcessExecutor] = []

    def executor(services):
        executors.append(InProcessExecutor(services, lambda: runner, concurrency=2))
        return executors[-1]

    with api_for(settings, executor=executor) as api:
        _, secret = api.key(api.account(credits=START))
        # Announced like a job on its way, the test holds the forming batch open: it starts
        # only once both jobs are in it (a lone job would start at once).
        with executors[0].dispatcher.backend.expecting():
            kept, dropped = (api.generate(secret, {**GENERATOR_BODY, "input": {"prompt": p}}
                                          ).json()["generation"]["id"] for p in ("a", "b"))
            assert runner.at_first_step.wait(STEP_TIMEOUT_S)
        assert cancel(api, secret, dropped).status_code == 200
        runner.release.set()
        assert runner.finished.wait(STEP_TIMEOUT_S)
        assert len(runner.outcomes) == 2  # one denoising batch
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while api.client.get(f"/api/v1/generations/{kept}", headers=api.headers(secret)
                             ).json()["generation"]["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert credits_of(api, secret)["balance"] == START - 40  # only the kept job is paid


def test_aixpose_picture_cancel_refunds_and_sends_picture_failed(tmp_path):
    with api_for(make_settings(tmp_path, allow_private_urls=True)) as api:
        account_id = api.account(plan="pro", credits=START)
        with transaction(api.services.session_factory) as session:
            secret = create_key(session, account_id, surface="aixpose")[1]
        headers = {"Authorization": f"Bearer {secret}"}
        project = api.client.post("/v1/projects", headers=headers, json={
            "name": "p", "output": "picture", "picture_aspect_ratio": "original",
            "picture_resolution": "1K"}).json()
        original = api.client.post(
            f"/v1/projects/{project['id']}/pictures", headers=headers,
            files={"file": ("room.jpg", image_bytes(96, 64, "JPEG"), "image/jpeg")},
            data={"scene_type": "interior", "scene_location": "living_room"}).json()
        variant = api.client.post(f"/v1/pictures/{original['id']}/enhancements",
                                  headers=headers, json={
                                      "instruction": {"source": "custom", "prompt": "brighter"},
                                      "webhook_url": "http://127.0.0.1:9/hook"}).json()["data"][0]
        balance = api.client.get("/v1/credits/balance", headers=headers).json()
        assert balance["balance"] < START

        cancelled = api.client.post(f"/v1/pictures/{variant['id']}/cancel", headers=headers)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "failed"
        assert cancelled.json()["error_code"] == "canceled"
        assert api.client.get("/v1/credits/balance", headers=headers).json()["balance"] == START
        with api.services.session_factory() as session:
            events = session.scalars(select(WebhookDelivery.event_type).where(
                WebhookDelivery.subject_id == variant["id"])).all()
        assert events == ["picture.failed"]

        error = assert_error(api.client.post(f"/v1/pictures/{variant['id']}/cancel",
                                             headers=headers), 409, "invalid_input", "picture_id")
        assert error["details"]["status"] == "failed"
        assert_error(api.client.post(f"/v1/pictures/{original['id']}/cancel", headers=headers),
                     409, "invalid_input", "picture_id")


def test_the_mcp_cancel_tool(tmp_path):
    with serve_app(tmp_path) as app:
        account_id = app.account(plan="pro", credits=START)
        _, secret = app.key(account_id)

        async def scenario():
            async with mcp_session(app.mcp_url, secret) as session:
                created = tool_json(await session.call_tool(
                    "wixma_generate_image", {"prompt": "a lamp", "quality": "low"}))["generation"]
                result = tool_json(await session.call_tool(
                    "wixma_cancel_generation", {"generation_id": created["id"]}))
                assert result["generation"]["status"] == "failed"
                assert result["generation"]["error_code"] == "canceled"
                error = tool_error(await session.call_tool(
                    "wixma_cancel_generation", {"generation_id": created["id"]}))
                assert error["code"] == "invalid_input"
                assert error["details"] == {"field": "generation_id", "status": "failed"}
                credits = tool_json(await session.call_tool("wixma_get_credits", {}))
                assert credits["credits"]["balance"] == START

        asyncio.run(scenario())


def test_the_dashboard_cancel_button(tmp_path):
    with api_for(make_settings(tmp_path)) as api:
        dashboard = Dashboard(api, credits=START)
        dashboard.sign_in()
        started = dashboard.post("/dashboard/generations", {
            "tool": "generator", "prompt": "a red sneaker", "quality": "low"})
        job_id = started.headers["location"].split("started=")[1]
        gallery = dashboard.client.get("/dashboard/generations").text
        assert f'action="/dashboard/generations/{job_id}/cancel"' in gallery

        refused = dashboard.client.post(f"/dashboard/generations/{job_id}/cancel",
                                        data={"csrf_token": "forged"}, follow_redirects=False)
        assert refused.status_code == 403
        response = dashboard.post(f"/dashboard/generations/{job_id}/cancel")
        assert response.status_code == 303
        status = dashboard.client.get(f"/dashboard/generations/{job_id}/status").json()
        assert (status["status"], status["error_code"]) == ("failed", "canceled")
        gallery = dashboard.client.get("/dashboard/generations").text
        assert f'action="/dashboard/generations/{job_id}/cancel"' not in gallery
        again = dashboard.post(f"/dashboard/generations/{job_id}/cancel")
        assert again.status_code == 409 and "already failed" in again.text

        stream = dashboard.client.get(f"/dashboard/generations/{job_id}/events")
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert '"error_code":"canceled"' in stream.text.split("event: generation")[1]
