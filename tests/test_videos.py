"""`/v1/videos` end to end on the in-process executor: pictures uploaded and approved over HTTP,
a reel rendered by the dispatcher, decoded with PyAV (frame count, size, music only when
supplied), credits charged, and a signed `video.completed` webhook."""

from __future__ import annotations

import base64
import io
import time
import wave

import av
import numpy as np
from standardwebhooks import Webhook

from retouch.serving.core import keys
from retouch.serving.core.db import transaction
from retouch.serving.executor import InProcessExecutor
from retouch.serving.runner import TaskRunner

from api_fixtures import api_for, assert_error, image_bytes, make_settings, serve_routes
from webhook_receiver import webhook_receiver


def wav_bytes(seconds: float = 0.4, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.sin(2 * np.pi * 330 * t) * 9000).astype(np.int16).tobytes())
    return buffer.getvalue()


def aixpose_secret(api, credits: int = 1000) -> str:
    account_id = api.account(plan="pro", credits=credits)
    with transaction(api.services.session_factory) as session:
        return keys.create_key(session, account_id, surface="aixpose")[1]


def add_picture(api, headers, project_id: str, color, scene_type: str = "interior",
                scene_location: str | None = "living_room") -> str:
    data = base64.b64encode(image_bytes(96, 64, fmt="JPEG", color=color)).decode()
    response = api.client.post(f"/v1/projects/{project_id}/pictures", headers=headers, json={
        "source": {"type": "base64", "media_type": "image/jpeg", "data": data},
        "scene_type": scene_type, "scene_location": scene_location})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_for_video(api, headers, video_id: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        video = api.client.get(f"/v1/videos/{video_id}", headers=headers).json()
        if video["status"] in ("completed", "failed"):
            return video
        time.sleep(0.05)
    raise AssertionError(f"video {video_id} did not finish")


def decode(data: bytes) -> tuple[int, tuple[int, int], list[str]]:
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(video=0))
        audio = [s.codec_context.name for s in container.streams.audio]
    return len(frames), (frames[0].width, frames[0].height), audio


def test_video_reels_render_end_to_end(tmp_path, tiny_store, monkeypatch):
    settings = make_settings(tmp_path, allow_private_urls=True, webhook_poll_seconds=0.05)
    music_loads = []  # the music model is used only where no music_url is given
    monkeypatch.setattr(tiny_store, "music", lambda _load=tiny_store.music:
                        music_loads.append(1) or _load())

    def executor(services):  # the voice-over needs the text-to-speech model
        return InProcessExecutor(services, lambda: TaskRunner(tiny_store))

    music = wav_bytes()
    with api_for(settings, executor=executor) as api, webhook_receiver() as receiver, \
            serve_routes({"/track.wav": (200, {"Content-Type": "audio/wav"}, music)}) as base:
        secret = aixpose_secret(api)
        headers = api.headers(secret)
        project = api.client.post("/v1/projects", headers=headers,
                                  json={"name": "Gdynia apartment campaign", "output": "video"})
        assert project.status_code == 201, project.text
        project_id = project.json()["id"]
        first = add_picture(api, headers, project_id, (220, 40, 40))
        second = add_picture(api, headers, project_id, (40, 40, 220))

        body = {"project_id": project_id, "picture_ids": [first, second],
                "scene_context": "Bright two-room flat near the beach", "voice": "Welcome home.",
                "background_music": "soft piano", "music_url": f"{base}/track.wav",
                "duration": 2, "aspect_ratio": "16:9", "resolution": "240p",
                "webhook_url": receiver.url}
        created = api.client.post("/v1/videos", json=body,
                                  headers=api.headers(secret, **{"Idempotency-Key": "reel-1"}))
        assert created.status_code == 201, created.text
        video = created.json()
        assert video["id"].startswith("vid_") and video["status"] in ("pending", "processing")
        assert video["picture_ids"] == [first, second] and video["cost_credits"] == 2 * 2
        assert video["audio"] == {"voice": "Welcome home.", "background_music": "soft piano",
                                  "music_url": f"{base}/track.wav", "music_track": True}
        assert (video["width"], video["height"], video["frame_count"]) == (426, 240, 48)
        replay = api.client.post("/v1/videos", json=body,
                                 headers=api.headers(secret, **{"Idempotency-Key": "reel-1"}))
        assert replay.status_code == 200 and replay.json()["id"] == video["id"]

        done = wait_for_video(api, headers, video["id"])
        assert done["status"] == "completed", done
        mp4 = api.client.get(done["public_url"].removeprefix("http://testserver"))
        assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
        assert decode(mp4.content) == (48, (426, 240), ["aac"])

        [post] = receiver.wait_for(1)
        event = Webhook(api.client.get("/v1/webhooks/secret", headers=headers).json()["secret"]
                        ).verify(post.body, post.headers)
        assert event["type"] == "video.completed" and event["data"]["id"] == video["id"]
        assert event["data"]["public_url"] == done["public_url"]

        # Every approved picture when none are listed; no music given: no audio stream.
        for picture_id in (second, first):
            assert api.client.post(f"/v1/pictures/{picture_id}/approve",
                                   headers=headers).status_code in (200, 201)
        silent = api.client.post("/v1/videos", headers=headers, json={
            "project_id": project_id, "duration": 2, "aspect_ratio": "9:16",
            "resolution": "240p"})
        assert silent.status_code == 201, silent.text
        assert silent.json()["picture_ids"] == [second, first]
        silent_done = wait_for_video(api, headers, silent.json()["id"])
        data = api.client.get(silent_done["public_url"].removeprefix("http://testserver")).content
        assert decode(data) == (48, (240, 426), [])
        assert music_loads == []  # music_url won over background_music; the silent one has none

        # A music direction without a track: the music model composes the reel's music.
        scored = api.client.post("/v1/videos", headers=headers, json={
            "project_id": project_id, "duration": 2, "resolution": "240p",
            "background_music": "soft piano"})
        assert scored.status_code == 201, scored.text
        assert scored.json()["cost_credits"] == 4  # the same price as without music
        assert scored.json()["audio"]["music_track"] is False
        scored_done = wait_for_video(api, headers, scored.json()["id"])
        assert scored_done["status"] == "completed", scored_done
        data = api.client.get(scored_done["public_url"].removeprefix("http://testserver")).content
        assert decode(data) == (48, (426, 240), ["aac"]) and music_loads
        with av.open(io.BytesIO(data)) as container:
            samples = np.concatenate([f.to_ndarray().mean(axis=0)
                                      for f in container.decode(audio=0)])
        assert float(np.sqrt(np.mean(samples ** 2))) > 0.01

        listed = api.client.get(f"/v1/videos?project_id={project_id}", headers=headers).json()
        assert [v["id"] for v in listed["data"]] == [scored.json()["id"], silent.json()["id"],
                                                     video["id"]]
        balance = api.client.get("/v1/credits/balance", headers=headers).json()["balance"]
        assert balance == 1000 - 4 - 4 - 4  # 2 s at 240p = 4 credits each, none refunded
        ledger = api.client.get("/v1/credits/ledger", headers=headers).json()["data"]
        reserves = [e for e in ledger if e["kind"] == "reserve"]
        assert sorted(e["amount"] for e in reserves) == [-4, -4, -4]
        # Each video's reservation names its job and the video it rendered (no pictures).
        assert sorted(e["video_id"] for e in reserves) == sorted(
            [video["id"], silent.json()["id"], scored.json()["id"]])
        assert all(e["job_id"] and e["picture_ids"] == [] for e in reserves)


def test_video_requests_are_validated_at_the_edge(tmp_path):
    executor = lambda s: InProcessExecutor(s, lambda: TaskRunner(None))  # noqa: E731
    with api_for(make_settings(tmp_path), executor=executor) \
            as api:
        secret = aixpose_secret(api)
        headers = api.headers(secret)
        project_id = api.client.post("/v1/projects", headers=headers,
                                     json={"name": "empty"}).json()["id"]
        none_approved = api.client.post("/v1/videos", headers=headers,
                                        json={"project_id": project_id, "duration": 2})
        assert_error(none_approved, 400, "invalid_input", "picture_ids")
        too_long = api.client.post("/v1/videos", headers=headers,
                                   json={"project_id": project_id, "duration": 600})
        assert_error(too_long, 400, "invalid_input", "duration")
        private_hook = api.client.post("/v1/videos", headers=headers, json={
            "project_id": project_id, "webhook_url": "https://127.0.0.1/hook"})
        assert_error(private_hook, 400, "invalid_input", "webhook_url")
        picture_id = add_picture(api, headers, project_id, (10, 10, 10))
        private_music = api.client.post("/v1/videos", headers=headers, json={
            "project_id": project_id, "picture_ids": [picture_id], "duration": 2,
            "music_url": "https://10.0.0.7/track.wav"})
        assert_error(private_music, 400, "invalid_input", "music_url")
        for voice in ("", "   ", "A long tour of every room in this flat."):  # 2 s: 15 chars
            spoken = api.client.post("/v1/videos", headers=headers, json={
                "project_id": project_id, "picture_ids": [picture_id], "duration": 2,
                "voice": voice})
            assert_error(spoken, 400, "invalid_input", "voice")
        too_many = api.client.post("/v1/videos", headers=headers, json={
            "project_id": project_id, "picture_ids": [picture_id], "duration": 60,
            "voice": "x" * 401})
        assert_error(too_many, 400, "invalid_input", "voice")
        assert api.client.get("/v1/videos", headers=headers).json()["data"] == []  # none made
        missing_project = api.client.post("/v1/videos", headers=headers,
                                          json={"project_id": "prj_nope", "duration": 2})
        assert missing_project.status_code == 404
        assert_error(api.client.get("/v1/videos/vid_nope", headers=headers), 404,
                     "invalid_input", "video_id")


def test_a_failed_video_is_refunded_and_sends_video_failed(tmp_path):
    """A video whose stored picture is gone fails with `invalid_input` on the dispatcher, is
    refunded in full and its `video.failed` event is signed and delivered."""
    settings = make_settings(tmp_path, allow_private_urls=True, webhook_poll_seconds=0.05)
    with api_for(settings) as api, webhook_receiver() as receiver:  # no executor yet
        secret = aixpose_secret(api, credits=500)
        headers = api.headers(secret)
        project_id = api.client.post("/v1/projects", headers=headers,
                                     json={"name": "gone"}).json()["id"]
        picture_id = add_picture(api, headers, project_id, (90, 200, 90))
        created = api.client.post("/v1/videos", headers=headers, json={
            "project_id": project_id, "picture_ids": [picture_id], "duration": 3,
            "resolution": "360p", "webhook_url": receiver.url})
        assert created.status_code == 201, created.text
        assert created.json()["cost_credits"] == 3 * 3
        balance = api.client.get("/v1/credits/balance", headers=headers).json()["balance"]
        assert balance == 500 - 9
        stored = api.services.storage.root / "uploads"
        for path in stored.glob("*"):
            if path.is_file() and not path.name.endswith(".meta"):
                path.unlink()  # the picture's stored image disappears before the job runs

        executor = InProcessExecutor(api.services, lambda: TaskRunner(None))
        executor.start()
        try:
            done = wait_for_video(api, headers, created.json()["id"])
        finally:
            executor.stop()
        assert done["status"] == "failed" and done["error_code"] == "invalid_input"
        assert done["public_url"] is None
        assert api.client.get("/v1/credits/balance", headers=headers).json()["balance"] == 500
        [post] = receiver.wait_for(1)
        key = api.client.get("/v1/webhooks/secret", headers=headers).json()["secret"]
        event = Webhook(key).verify(post.body, post.headers)
        assert event["type"] == "video.failed" and event["data"]["id"] == done["id"]
        assert event["data"]["status"] == "failed"


def test_scene_context_plays_the_pictures_as_a_property_tour(tmp_path):
    """With a `scene_context` the reel opens on the exterior, then living spaces, rooms and
    details, and the job holds establishing shots and named rooms longer; without one the
    pictures play as listed, evenly."""
    from sqlalchemy import select

    from retouch.serving.core.tables import Generation, Video

    with api_for(make_settings(tmp_path)) as api:  # no executor: the jobs stay pending
        headers = api.headers(aixpose_secret(api))
        project_id = api.client.post("/v1/projects", headers=headers,
                                     json={"name": "tour"}).json()["id"]
        bath = add_picture(api, headers, project_id, (200, 200, 220), "interior", "bathroom")
        detail = add_picture(api, headers, project_id, (120, 90, 60), "interior", "other")
        facade = add_picture(api, headers, project_id, (90, 140, 200), "exterior", "facade")
        kitchen = add_picture(api, headers, project_id, (220, 210, 190), "interior", "kitchen")
        listed = [bath, detail, facade, kitchen]

        def create(**extra) -> dict:
            response = api.client.post("/v1/videos", headers=headers, json={
                "project_id": project_id, "picture_ids": listed, "duration": 8, **extra})
            assert response.status_code == 201, response.text
            return response.json()

        def holds(video_id: str) -> dict[str, float]:
            with api.services.session_factory() as session:
                job = session.scalars(select(Generation).join(
                    Video, Video.generation_id == Generation.id).where(Video.id == video_id)).one()
                return {p["picture_id"]: p["hold"] for p in job.request["input"]["pictures"]}

        toured = create(scene_context="Family flat with a brand-new kitchen")
        assert toured["picture_ids"] == [facade, kitchen, bath, detail]
        paced = holds(toured["id"])
        assert paced[facade] > paced[bath] > paced[detail] and paced[kitchen] > paced[facade]
        plain = create()
        assert plain["picture_ids"] == listed and set(holds(plain["id"]).values()) == {1.0}


def test_publishing_a_video_project_starts_its_listing_reel_once(tmp_path):
    """`output: "video"`: publish renders a tour of the approved pictures, once per set of
    pictures; a `picture` project's publish starts none."""
    with api_for(make_settings(tmp_path)) as api:  # no executor: the reels stay pending
        headers = api.headers(aixpose_secret(api))

        def project(output: str) -> str:
            return api.client.post("/v1/projects", headers=headers, json={
                "name": "Seaside house", "output": output, "video_format": "webm"}).json()["id"]

        def approved(project_id: str, *scenes) -> list[str]:
            ids = [add_picture(api, headers, project_id, (60, 90, 120), *scene) for scene in scenes]
            for picture_id in ids:
                assert api.client.post(f"/v1/pictures/{picture_id}/approve",
                                       headers=headers).status_code in (200, 201)
            return ids

        def publish_and_list(project_id: str) -> list[dict]:
            published = api.client.post(f"/v1/projects/{project_id}/publish", headers=headers)
            assert published.status_code == 200, published.text
            return api.client.get(f"/v1/videos?project_id={project_id}",
                                  headers=headers).json()["data"]

        reel_project = project("video")
        kitchen, facade = approved(reel_project, ("interior", "kitchen"), ("exterior", "facade"))
        [reel] = publish_and_list(reel_project)
        assert reel["picture_ids"] == [facade, kitchen]  # the tour opens on the exterior
        assert (reel["duration"], reel["resolution"], reel["scene_context"]) == (
            6, "720p", "Seaside house")
        assert len(publish_and_list(reel_project)) == 1  # same pictures: no second reel
        [bedroom] = approved(reel_project, ("interior", "bedroom"))
        newest = publish_and_list(reel_project)
        assert len(newest) == 2 and newest[0]["picture_ids"] == [facade, kitchen, bedroom]
        assert newest[0]["duration"] == 9

        stills = project("picture")
        approved(stills, ("interior", "kitchen"))
        assert publish_and_list(stills) == []
