"""AIXpose core (`serving.core.projects`): lineage numbers under concurrent enhancements,
resource idempotency, agent preferences. SQLite, and PostgreSQL when RETOUCH_TEST_POSTGRES_URL
is set."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from retouch.serving.core.errors import IdempotencyConflict
from retouch.serving.core import accounts, jobs, keys, projects
from retouch.serving.core.db import transaction
from retouch.serving.core.idempotency import create_idempotently
from retouch.serving.core.image_refs import store_upload, validate_image_bytes
from retouch.serving.core.storage import LocalStorage
from retouch.serving.core.tables import AgentSettings, Project

from db_fixtures import empty_session_factory

SKY = ["exterior-sky-blue"]


@pytest.fixture
def world(db_engine, tmp_path):
    sf = empty_session_factory(db_engine)
    storage = LocalStorage(tmp_path / "files", "http://testserver")
    with transaction(sf) as session:
        account = accounts.create_account(session, "Agency", "pro", 100_000)
        key, _ = keys.create_key(session, account.id, surface="aixpose")
        project = projects.create_project(session, account.id, name="p", output="picture",
                                          picture_aspect_ratio="original",
                                          picture_resolution="1K")
        buffer = io.BytesIO()
        Image.new("RGB", (32, 24), (90, 140, 200)).save(buffer, format="PNG")
        upload = store_upload(session, storage, key, validate_image_bytes(buffer.getvalue(), "f"))
        original = projects.create_original(session, project, upload, scene_type="exterior",
                                             scene_location="facade", webhook_url=None)
    return sf, storage, key, original.id


def enhance(world, picture_id, variants=1, idempotency_key=None):
    sf, storage, key, _ = world
    return projects.create_enhancement(
        sf, storage, key, picture_id, action_ids=SKY, prompt=None,
        instruction={"source": "preset", "actions": SKY}, variants=variants, aspect_ratio=None,
        resolution=None, webhook_url=None, model_revision="tiny:sdxl-base",
        idempotency_key=idempotency_key, idempotency_ttl_hours=24)


def finish_all(world):
    sf, storage, _, _ = world
    while (job := jobs.lease_next_job(sf, "w", 30)) is not None:
        keys_out = []
        for n in range(job.request["options"].get("variants", 1)):
            key = f"outputs/{job.id}/{n + 1}.png"
            buffer = io.BytesIO()
            Image.new("RGB", (40, 30), (n * 40, 10, 10)).save(buffer, format="PNG")
            storage.put(key, buffer.getvalue(), "image/png")
            keys_out.append(key)
        assert jobs.complete_job(sf, job.id, "w", keys_out)


def test_concurrent_enhancements_get_distinct_lineage_numbers(world):
    sf, _, _, original_id = world
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: enhance(world, original_id)[0], range(4)))
    versions = sorted((p[0].version, p[0].subversion) for p in results)
    assert versions == [(1, 0), (2, 0), (3, 0), (4, 0)]
    finish_all(world)
    generated = results[0][0]
    with ThreadPoolExecutor(3) as pool:
        again = list(pool.map(lambda _: enhance(world, generated.id, variants=2)[0], range(3)))
    numbers = sorted((p.version, p.subversion) for batch in again for p in batch)
    assert numbers == [(generated.version, s) for s in range(1, 7)]
    with sf() as session:
        picture = projects.get_picture(session, generated.account_id, again[0][1].id)
        chain = projects.lineage(session, picture)
        assert [p.id for p in chain] == [picture.id, generated.id, original_id]
        assert projects.picture_state(session, chain[1])["status"] == "completed"


def test_enhancement_replays_and_resource_idempotency(world):
    sf, _, key, original_id = world
    first, replayed = enhance(world, original_id, variants=2, idempotency_key="k1")
    again, replayed_again = enhance(world, original_id, variants=2, idempotency_key="k1")
    assert not replayed and replayed_again and [p.id for p in again] == [p.id for p in first]

    def create(session):
        return projects.create_project(session, key.account_id, name="x", output="video",
                                       picture_aspect_ratio="1:1",
                                       picture_resolution="4K").id

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: create_idempotently(sf, key.id, "same", {"n": 1},
                                                           "project", create, ttl_hours=24),
                             range(4)))
    assert len({project_id for project_id, _ in made}) == 1
    assert sorted(replay for _, replay in made) == [False, True, True, True]
    with sf() as session:
        assert session.query(Project).filter(Project.output == "video").count() == 1
    with pytest.raises(IdempotencyConflict):
        create_idempotently(sf, key.id, "same", {"n": 2}, "project", create, ttl_hours=24)


def test_preferences_respect_exclusive_groups_and_explicit_choices():
    agent = AgentSettings(account_id="a", enabled=True, explicit={}, learned={"interior": {
        "interior-style-japandi": 4.0, "interior-style-modern": 6.0,
        "light-bright-natural": 2.0, "renovation-floor": -1.0, "exterior-twilight": 9.0}})
    assert projects.preferred_actions(agent, "interior") == ["interior-style-modern",
                                                             "light-bright-natural"]
    agent.explicit = {"interior": ["decluttering-light"]}
    assert projects.preferred_actions(agent, "interior") == ["decluttering-light"]
    assert projects.preferred_actions(agent, "exterior") == []


def test_publish_freezes_approved_pictures_and_completed_videos(world):
    from retouch.serving.core.errors import InvalidInput
    from retouch.serving.tasks import parse_request
    from retouch.serving.core.tables import Video

    sf, storage, key, original_id = world
    made, _ = enhance(world, original_id, variants=2)
    with transaction(sf) as session:
        project = session.get_one(Project, made[0].project_id)
        with pytest.raises(InvalidInput):
            projects.publish(session, project, storage)  # nothing approved yet
    body = {"tool": "generator", "input": {"prompt": "reel"}, "options": {"quality": "low"}}
    reel_job, _ = jobs.create_job(sf, key, parse_request(body), body,
                                         surface="aixpose")
    with transaction(sf) as session:
        session.add(Video(account_id=key.account_id, project_id=made[0].project_id,
                          generation_id=reel_job.id, picture_ids=[made[1].id],
                          duration_seconds=6, aspect_ratio="16:9", resolution="1K", width=64,
                          height=36, fps=12))
    finish_all(world)
    with transaction(sf) as session:
        projects.approve(session, projects.get_picture(session, key.account_id, made[1].id))
        project = projects.publish(session, session.get_one(Project, made[0].project_id),
                                   storage)
        media = project.published_media
    assert [(m["type"], m["id"]) for m in media][0] == ("picture", made[1].id)
    assert media[1]["type"] == "video" and media[1]["url"].endswith(".png")
    assert project.status == "published" and project.published_at is not None
