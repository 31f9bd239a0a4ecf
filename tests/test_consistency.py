"""Consistency goals: an enhancement that keeps to an approved picture of the same project.

Pipeline: the reference conditions every pass through the IP-Adapter (its pixels are what the
CLIP image encoder sees, the output follows it). API: `instruction.consistent_with` is checked
at the edge (approved, same project, same account; else 400 naming the field, nothing charged)
and the job carries the reference's stored image and seed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from retouch.pipelines.common import RunContext
from retouch.serving.core import keys
from retouch.serving.core.db import transaction
from retouch.serving.core.image_refs import load_job_inputs
from retouch.serving.core.tables import Generation, Picture
from retouch.serving.executor import InProcessExecutor
from retouch.serving.runner import TaskRunner
from retouch.serving.tasks import parse_request

from api_fixtures import api_for, assert_error, image_bytes, make_settings

FIELD = "instruction.consistent_with"


def room(width=72, height=48) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 3, y * 4, np.full_like(x, 90)], -1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


RED, BLUE = Image.new("RGB", (40, 40), (220, 30, 30)), Image.new("RGB", (40, 40), (30, 30, 220))


@pytest.fixture
def encoded(tiny_store):
    """The pixel batches the IP-Adapter's CLIP image encoder sees during the test."""
    encoder, processor = tiny_store.image_encoder()
    seen: list[torch.Tensor] = []
    handle = encoder.register_forward_hook(lambda module, args, kwargs, output: seen.append(
        (args[0] if args else kwargs["pixel_values"]).detach().clone()), with_kwargs=True)
    yield seen, processor
    handle.remove()


def enhance(store, actions, reference=None, seed=4) -> np.ndarray:
    body = {"tool": "enhance", "input": {"image": {"upload_id": "u"}},
            "options": {"actions": actions, "resolution": "1K", "quality": "low"}}
    images = {"input.image": room()}
    if reference is not None:
        body["input"]["reference"] = {"upload_id": "r"}
        images["input.reference"] = reference
    (out,) = TaskRunner(store).run(parse_request(body, surface=None), images,
                                   RunContext(seed=seed))
    return np.asarray(out, dtype=np.int16)


@pytest.mark.parametrize("actions", [["renovation-floor"], ["light-bright-natural"]],
                         ids=["region-pass", "whole-frame-pass"])
def test_the_reference_conditions_the_enhancement_through_the_adapter(tiny_store, encoded,
                                                                       actions):
    seen, processor = encoded
    plain = enhance(tiny_store, actions)
    assert seen == []  # no reference: the adapter is never loaded
    red = enhance(tiny_store, actions, RED)
    blue = enhance(tiny_store, actions, BLUE)
    # Each pass encoded exactly the reference's own pixels.
    assert len(seen) == 2 and all(batch.shape[0] == 1 for batch in seen)
    for batch, reference in zip(seen, (RED, BLUE)):
        expected = processor(images=reference, return_tensors="pt").pixel_values
        assert torch.allclose(batch.float(), expected.to(batch.device).float(), atol=1e-4)
    # Same seed, same source: the output follows the reference.
    assert np.abs(red - plain).mean() > 0.5 and np.abs(red - blue).mean() > 0.5
    assert np.array_equal(enhance(tiny_store, actions, RED), red)  # deterministic
    store_pipes = (tiny_store.controlnet_img2img("depth"), tiny_store.inpaint())
    for pipe in store_pipes:  # the shared UNets are left as they were
        assert pipe.image_encoder is None and pipe.unet.encoder_hid_proj is None


# ---- the API edge -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aix(tmp_path_factory, tiny_store):
    settings = make_settings(tmp_path_factory.mktemp("consistency"), dispatcher_concurrency=1)
    executor = lambda s: InProcessExecutor(s, lambda: TaskRunner(tiny_store))  # noqa: E731
    with api_for(settings, executor=executor) as api:
        yield api


class Client:
    def __init__(self, api):
        self.api = api
        account_id = api.account(plan="pro", credits=5000)
        with transaction(api.services.session_factory) as session:
            self.secret = keys.create_key(session, account_id, surface="aixpose")[1]

    def post(self, path, body=None, **kwargs):
        return self.api.client.post(path, json=body, headers={
            "Authorization": f"Bearer {self.secret}"}, **kwargs)

    def get(self, path) -> dict:
        response = self.api.client.get(path, headers={"Authorization": f"Bearer {self.secret}"})
        assert response.status_code == 200, response.text
        return response.json()

    def project(self) -> str:
        response = self.post("/v1/projects", {"name": "listing", "picture_resolution": "1K"})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def picture(self, project_id, colour=(150, 120, 90)) -> str:
        response = self.api.client.post(
            f"/v1/projects/{project_id}/pictures",
            headers={"Authorization": f"Bearer {self.secret}"},
            files={"file": ("room.png", image_bytes(64, 48, "PNG", colour), "image/png")},
            data={"scene_type": "interior"})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def enhance(self, picture_id, consistent_with=None, variants=1):
        instruction = {"source": "preset", "actions": ["renovation-floor"]}
        if consistent_with is not None:
            instruction["consistent_with"] = consistent_with
        return self.post(f"/v1/pictures/{picture_id}/enhancements",
                         {"instruction": instruction, "variants": variants})

    def done(self, picture_id, timeout_s=120.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            picture = self.get(f"/v1/pictures/{picture_id}")
            if picture["status"] in ("completed", "failed"):
                assert picture["status"] == "completed", picture
                return picture
            time.sleep(0.1)
        raise AssertionError(f"picture {picture_id} did not finish")

    def approved_variant(self, picture_id) -> dict:
        response = self.enhance(picture_id)
        assert response.status_code == 201, response.text
        made = self.done(response.json()["data"][0]["id"])
        assert self.post(f"/v1/pictures/{made['id']}/approve").status_code == 200
        return made

    def balance(self) -> int:
        return self.get("/v1/credits/balance")["balance"]


def test_an_enhancement_keeps_to_an_approved_picture_s_image_and_seed(aix):
    owner = Client(aix)
    project = owner.project()
    kitchen, bedroom = owner.picture(project), owner.picture(project, (90, 120, 150))
    look = owner.approved_variant(kitchen)
    response = owner.enhance(bedroom, consistent_with=look["id"], variants=2)
    assert response.status_code == 201, response.text
    made = response.json()["data"]
    # The seed family: the reference's seed, variant i at seed + i.
    assert [p["seed"] for p in made] == [look["seed"], look["seed"] + 1]
    assert made[0]["source_instruction"]["consistent_with"] == look["id"]
    with aix.services.session_factory() as session:
        job = session.get_one(Generation, session.get_one(Picture, made[0]["id"]).generation_id)
        reference_job = session.get_one(Generation,
                                        session.get_one(Picture, look["id"]).generation_id)
        request = parse_request(job.request, surface="aixpose")
        inputs = load_job_inputs(aix.services.session_factory, aix.services.storage, request)
        reference_bytes = aix.services.storage.get(reference_job.output_keys[0])
    assert job.seed == look["seed"]
    assert inputs["input.reference"] == reference_bytes  # the approved picture's stored image
    assert all(owner.done(p["id"])["status"] == "completed" for p in made)


def test_consistent_with_must_name_an_approved_picture_of_the_same_project(aix):
    owner, stranger = Client(aix), Client(aix)
    project, other_project = owner.project(), owner.project()
    source = owner.picture(project)
    unapproved = owner.picture(project)
    elsewhere = owner.approved_variant(owner.picture(other_project))
    foreign = stranger.approved_variant(stranger.picture(stranger.project()))
    before = owner.balance()
    for reference_id, words in ((unapproved, "not approved"), (elsewhere["id"], "another project"),
                                (foreign["id"], "not found"), ("pic_missing", "not found")):
        error = assert_error(owner.enhance(source, consistent_with=reference_id), 400,
                             "invalid_input", FIELD)
        assert words in error["message"]
    assert owner.balance() == before  # nothing charged
    pictures = owner.get(f"/v1/projects/{project}/pictures")["data"]
    assert sorted(p["id"] for p in pictures) == sorted([source, unapproved])  # nothing made
