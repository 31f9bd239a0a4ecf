"""Live progress as Server-Sent Events: a real in-process job streamed to its end, reconnecting
with Last-Event-ID over a real loopback server, keep-alive comments, account isolation, and the
AIXpose picture and video streams."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from retouch.serving.core.db import transaction
from retouch.serving.core.keys import create_key
from retouch.serving.event_streams import PHASE
from retouch.serving.executor import InProcessExecutor

from api_fixtures import GENERATOR_BODY, api_for, assert_error, image_bytes, make_settings
from live_fixtures import STEP_TIMEOUT_S, GatedRunner, parse_events, read_events
from mcp_fixtures import serve_app

STATUS_ORDER = {"pending": 0, "processing": 1, "completed": 2, "failed": 2}


def executor_for(runner):
    return lambda services: InProcessExecutor(services, lambda: runner)


def assert_well_formed(events) -> None:
    """Ids grow, statuses move forward, progress never goes back, the end is the object."""
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), ids
    states = [e.data for e in events[:-1]]
    assert all(e.event in ("status", "progress") for e in events[:-1])
    assert all(set(s) == {"status", "progress", "step", "steps"} for s in states)
    ranks = [STATUS_ORDER[s["status"]] for s in states]
    assert ranks == sorted(ranks)
    for before, after in zip(events[:-1], events[1:-1]):
        assert (after.event == "status") == (after.data["status"] != before.data["status"])
        if after.data["status"] == before.data["status"]:
            assert after.data["progress"] > before.data["progress"]
    assert events[0].event == "status"


def test_a_job_streams_its_steps_in_order_and_ends_with_the_generation(tmp_path, tiny_store):
    runner = GatedRunner(tiny_store)
    with api_for(make_settings(tmp_path), executor=executor_for(runner)) as api:
        _, secret = api.key()
        created = api.generate(secret, GENERATOR_BODY).json()["generation"]
        assert runner.at_first_step.wait(STEP_TIMEOUT_S)
        threading.Timer(0.3, runner.release.set).start()  # let the stream open mid-run
        response = api.client.get(f"/api/v1/generations/{created['id']}/events",
                                  headers=api.headers(secret))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        events, _ = parse_events(response.text)
        assert_well_formed(events)

        assert events[0].data["status"] == "processing"
        steps = [e.data["step"] for e in events if e.event == "progress"]
        assert steps == list(range(1, runner.steps[-1][1] + 1))  # one event per step
        assert all(e.data["steps"] == runner.steps[-1][1] for e in events if e.event == "progress")
        assert events[-2].event == "status" and events[-2].data["status"] == "completed"
        assert events[-2].data["progress"] == 1.0
        final = events[-1]
        assert final.event == "generation" and final.id == events[-2].id + 1
        fetched = api.client.get(f"/api/v1/generations/{created['id']}",
                                 headers=api.headers(secret)).json()
        assert final.data["object"] == "response"
        assert final.data["generation"] == fetched["generation"]
        assert final.data["generation"]["status"] == "completed"

        # Reconnecting after the end: 204, which tells EventSource to stop.
        again = api.client.get(f"/api/v1/generations/{created['id']}/events",
                               headers=api.headers(secret, **{"Last-Event-ID": str(final.id)}))
        assert again.status_code == 204 and again.content == b""
        # Reconnecting after the terminal status but before the object: only the object.
        tail = api.client.get(f"/api/v1/generations/{created['id']}/events",
                              headers=api.headers(secret, **{"Last-Event-ID": str(final.id - 1)}))
        assert [e.event for e in parse_events(tail.text)[0]] == ["generation"]


def test_reconnecting_with_last_event_id_resumes_without_repeating(tmp_path, tiny_store):
    runner = GatedRunner(tiny_store)
    with serve_app(tmp_path, executor=executor_for(runner)) as app:
        _, secret = app.key()
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=app.base_url, headers=headers, timeout=STEP_TIMEOUT_S) as http:
            job_id = http.post("/api/v1/generations", json=GENERATOR_BODY).json()[
                "generation"]["id"]
            assert runner.at_first_step.wait(STEP_TIMEOUT_S)
            url = f"/api/v1/generations/{job_id}/events"
            with http.stream("GET", url) as first:
                seen = read_events(first.iter_lines(),
                                   until=lambda e: e.data.get("status") == "processing")
            assert seen[-1].data["status"] == "processing"
            last_id = seen[-1].id
            with http.stream("GET", url, headers={"Last-Event-ID": str(last_id)}) as second:
                runner.release.set()
                resumed = read_events(second.iter_lines())
        assert resumed and all(e.id > last_id for e in resumed)
        assert_well_formed(seen[-1:] + resumed)
        assert [e.event for e in resumed][0] == "progress"  # same status: no new status event
        assert resumed[-1].event == "generation"
        assert resumed[-1].data["generation"]["status"] == "completed"


def test_keep_alive_comments_while_a_job_waits(tmp_path):
    settings = make_settings(tmp_path, events_heartbeat_seconds=0.2)
    with api_for(settings) as api:  # no executor: the job stays pending
        _, secret = api.key()
        job_id = api.generate(secret, GENERATOR_BODY).json()["generation"]["id"]
        threading.Timer(0.9, lambda: api.client.post(
            f"/api/v1/generations/{job_id}/cancel", headers=api.headers(secret))).start()
        started = time.monotonic()
        response = api.client.get(f"/api/v1/generations/{job_id}/events",
                                  headers=api.headers(secret))
        elapsed = time.monotonic() - started
    events, comments = parse_events(response.text)
    assert comments.count("keep-alive") >= 2, comments
    assert [e.data.get("status") for e in events[:-1]] == ["pending", "failed"]
    assert events[-1].data["generation"]["error_code"] == "canceled"
    assert elapsed < 10


def test_another_accounts_job_is_not_found_and_reads_need_the_scope(api):
    _, owner = api.key()
    _, stranger = api.key()
    _, writer = api.key(scopes=["generations:create"])
    job_id = api.generate(owner, GENERATOR_BODY).json()["generation"]["id"]
    url = f"/api/v1/generations/{job_id}/events"
    assert_error(api.client.get(url, headers=api.headers(stranger)), 404, "invalid_input", "id")
    assert_error(api.client.get(url, headers=api.headers(writer)), 403, "forbidden")
    assert_error(api.client.get(url), 401, "unauthorized")
    assert_error(api.client.get("/api/v1/generations/nope/events", headers=api.headers(owner)),
                 404, "invalid_input", "id")


def aixpose_headers(api) -> dict[str, str]:
    """An AIXpose key of a new account."""
    account_id = api.account(plan="pro", credits=5000)
    with transaction(api.services.session_factory) as session:
        secret = create_key(session, account_id, surface="aixpose")[1]
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def aixpose(tmp_path):
    with api_for(make_settings(tmp_path, allow_private_urls=True)) as api:  # jobs stay pending
        yield api, aixpose_headers(api)


def new_enhancement(api, headers) -> tuple[str, dict]:
    project = api.client.post("/v1/projects", headers=headers, json={
        "name": "p", "output": "picture", "picture_aspect_ratio": "original",
        "picture_resolution": "1K"}).json()
    original = api.client.post(
        f"/v1/projects/{project['id']}/pictures", headers=headers,
        files={"file": ("room.jpg", image_bytes(96, 64, "JPEG"), "image/jpeg")},
        data={"scene_type": "interior", "scene_location": "living_room"}).json()
    variants = api.client.post(f"/v1/pictures/{original['id']}/enhancements", headers=headers,
                               json={"instruction": {"source": "custom", "prompt": "brighter"},
                                     "variants": 1}).json()["data"]
    return project["id"], {"original": original, "variant": variants[0]}


def test_aixpose_picture_and_video_streams_end_with_their_objects(aixpose):
    api, headers = aixpose
    project_id, pictures = new_enhancement(api, headers)
    original, variant = pictures["original"], pictures["variant"]

    done = api.client.get(f"/v1/pictures/{original['id']}/events", headers=headers)
    events, _ = parse_events(done.text)
    assert [e.event for e in events] == ["status", "picture"]  # an upload is complete at once
    assert events[-1].data == api.client.get(f"/v1/pictures/{original['id']}",
                                             headers=headers).json()

    threading.Timer(0.3, lambda: api.client.post(f"/v1/pictures/{variant['id']}/cancel",
                                                 headers=headers)).start()
    streamed = api.client.get(f"/v1/pictures/{variant['id']}/events", headers=headers)
    events, _ = parse_events(streamed.text)
    assert [e.data.get("status") for e in events[:-1]] == ["pending", "failed"]
    assert events[-1].event == "picture" and events[-1].data["id"] == variant["id"]
    assert events[-1].data["status"] == "failed" and events[-1].data["error_code"] == "canceled"

    assert api.client.post(f"/v1/pictures/{original['id']}/approve",
                           headers=headers).status_code == 200
    video = api.client.post("/v1/videos", headers=headers,
                            json={"project_id": project_id, "duration": 5}).json()
    threading.Timer(0.3, lambda: api.client.post(f"/v1/videos/{video['id']}/cancel",
                                                 headers=headers)).start()
    streamed = api.client.get(f"/v1/videos/{video['id']}/events", headers=headers)
    events, _ = parse_events(streamed.text)
    assert events[-1].event == "video" and events[-1].data["status"] == "failed"
    assert events[-1].data == api.client.get(f"/v1/videos/{video['id']}",
                                             headers=headers).json()
    assert events[-1].id // PHASE == 1  # cancelled before its first attempt

    stranger = aixpose_headers(api)
    assert_error(api.client.get(f"/v1/pictures/{variant['id']}/events", headers=stranger),
                 404, "invalid_input", "picture_id")
    assert_error(api.client.get(f"/v1/videos/{video['id']}/events", headers=stranger),
                 404, "invalid_input", "video_id")


def test_openapi_documents_the_stream_and_the_cancel(api):
    paths = api.client.get("/openapi.json").json()["paths"]
    events = paths["/api/v1/generations/{generation_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {"404", "401"} <= set(events["responses"])
    assert [p["name"] for p in events["parameters"] if p["in"] == "header"] == ["Last-Event-ID"]
    cancel = paths["/api/v1/generations/{generation_id}/cancel"]["post"]
    assert "invalid_input" in cancel["responses"]["409"]["description"]
    assert cancel["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/GenerationResponse")
    assert {"/v1/pictures/{picture_id}/events", "/v1/pictures/{picture_id}/cancel",
            "/v1/videos/{video_id}/events", "/v1/videos/{video_id}/cancel"} <= set(paths)
