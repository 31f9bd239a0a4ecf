"""The Ray backend against real Serve deployments of the tiny engine: outputs, progress through
the progress board, errors that keep their type, and cancellation reaching the replica."""

from __future__ import annotations

import io
import shutil
import time

import pytest
from PIL import Image

from retouch.pipelines.errors import Cancelled
from retouch.serving.core.errors import InvalidInput
from retouch.serving.tasks import parse_request

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def backend(tmp_path_factory, tiny_cache_dir):
    from retouch.models.tiny import build_tiny_models
    from retouch.serving.deployments import EngineConfig
    from retouch.serving.dispatcher import RayBackend
    from retouch.serving.runtime import deploy_families, ray_temp_dir, start_ray, stop_ray
    from retouch.serving.serve_config import default_serve_config
    from retouch.serving.settings import Settings

    build_tiny_models(tiny_cache_dir)
    settings = Settings(home=tmp_path_factory.mktemp("ray-backend"))
    start_ray(settings)
    try:
        config = EngineConfig(profile="tiny", device="cpu", cache_dir=str(tiny_cache_dir))
        families = deploy_families(default_serve_config(config.model_dump()))
        yield RayBackend(families, poll_seconds=0.05)
    finally:
        stop_ray()
        shutil.rmtree(ray_temp_dir(settings.home), ignore_errors=True)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_generator_and_upscaler_run_on_their_families_with_progress(backend):
    progress: list[float] = []
    body = {"tool": "generator", "input": {"prompt": "a lamp"},
            "options": {"quality": "low", "output_format": "jpeg"}}
    outcome = backend.run("gen-1", parse_request(body), {}, 3, progress.append, lambda: False)
    [data] = outcome.outputs
    assert outcome.model_revisions["base"].startswith("sha256:")  # the tiny twin's content
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (64, 64)
    assert progress and progress == sorted(progress) and progress[-1] <= 1.0

    upscale = {"tool": "upscaler", "input": {"image": {"upload_id": "u"}},
               "options": {"scale": 2}}
    [data] = backend.run("up-1", parse_request(upscale), {"input.image": png(40, 30)}, 3,
                         lambda f: None, lambda: False).outputs
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (80, 60)


def test_pipeline_errors_keep_their_type_across_ray(backend):
    body = {"tool": "upscaler", "input": {"image": {"upload_id": "u"}}}
    with pytest.raises(InvalidInput, match="input.image") as caught:
        backend.run("bad-1", parse_request(body), {"input.image": b"not an image"}, 3,
                    lambda f: None, lambda: False)
    assert caught.value.field == "input.image"


def test_cancel_reaches_the_replica_and_stops_the_job(backend):
    body = {"tool": "photographer", "input": {"main_image": {"upload_id": "u"}},
            "options": {"mode": "carousel", "quality": "high"}}  # ten frames: long enough
    images = {"input.main_image": png(64, 64)}
    started = time.monotonic()
    backend.run("full-1", parse_request(body), images, 3, lambda f: None, lambda: False)
    full = time.monotonic() - started

    cancel_at = time.monotonic() + 0.3
    started = time.monotonic()
    with pytest.raises(Cancelled):
        backend.run("cancel-1", parse_request(body), images, 3, lambda f: None,
                    lambda: time.monotonic() > cancel_at)
    assert time.monotonic() - started < full  # stopped early, not run to the end


class StepSink:
    """A progress sink that also takes denoising steps, as the dispatcher's JobTracker does."""

    def __init__(self):
        self.fractions: list[float] = []
        self.steps: list[tuple[int, int]] = []

    def __call__(self, fraction: float) -> None:
        self.fractions.append(fraction)

    def report_step(self, step: int, steps: int) -> None:
        self.steps.append((step, steps))


def test_denoising_steps_travel_with_progress_through_the_board(backend):
    body = {"tool": "photographer", "input": {"main_image": {"upload_id": "u"}},
            "options": {"mode": "carousel", "quality": "low"}}  # ten frames of denoising
    sink = StepSink()
    backend.run("steps-1", parse_request(body), {"input.main_image": png(64, 64)}, 3, sink,
                lambda: False)
    assert sink.fractions == sorted(sink.fractions)
    assert sink.steps and all(1 <= step <= steps for step, steps in sink.steps)
