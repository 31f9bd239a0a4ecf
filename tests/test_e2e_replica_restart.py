"""A replica that keeps running out of memory is restarted by the real Serve controller.

The diffusion family runs one replica whose jobs with seed `OOM_SEED` raise
`torch.cuda.OutOfMemoryError` inside the pipeline on any replica (`fault_oom_seeds`). Three such
jobs in a row fail `OutOfMemory` one by one; the replica's health check then fails, Serve
replaces it with a new actor, and an ordinary job sent afterwards comes back as an image from the
new replica. Jobs are sent as the dispatcher sends them, through `RayBackend`.
"""

from __future__ import annotations

import shutil
import time

import pytest

from retouch.serving.replica_io import OutOfMemory
from retouch.serving.tasks import parse_request
from test_e2e_autoscaling import assert_images, replica_states, wait_for_replicas

pytestmark = pytest.mark.timeout(300)

DIFFUSION = ("retouch-diffusion", "DiffusionDeployment")
OOM_SEED = 666
WAIT_S = 150


def serve_config(cache_dir):
    from ray.serve.schema import ServeDeploySchema

    from retouch.serving.serve_config import checked_serve_config

    args = {"profile": "tiny", "device": "cpu", "cache_dir": str(cache_dir),
            "fault_oom_seeds": [OOM_SEED]}
    deployment = {"ray_actor_options": {"num_cpus": 0}, "graceful_shutdown_timeout_s": 5,
                  "graceful_shutdown_wait_loop_s": 0.5}
    return checked_serve_config(ServeDeploySchema.model_validate({
        "proxy_location": "Disabled",
        "applications": [
            {"name": "retouch-diffusion", "route_prefix": None, "args": args,
             "import_path": "retouch.serving.deployments:build_diffusion_app",
             "deployments": [{"name": "DiffusionDeployment", "num_replicas": 1,
                              "health_check_period_s": 1, "health_check_timeout_s": 60,
                              **deployment}]},
            {"name": "retouch-upscaler", "route_prefix": None, "args": args,
             "import_path": "retouch.serving.deployments:build_upscaler_app",
             "deployments": [{"name": "UpscalerDeployment", **deployment, "autoscaling_config": {
                 "min_replicas": 0, "max_replicas": 1, "target_ongoing_requests": 1}}]},
        ]}))


def diffusion_replicas() -> set[str]:
    """Names of the live diffusion replica actors (a restarted replica is a new actor)."""
    import ray

    return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
            if "DiffusionDeployment" in actor["name"]}


def wait_for(condition, what: str, timeout_s: float = WAIT_S) -> float:
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        assert elapsed < timeout_s, f"{what} within {timeout_s:g} s"
        time.sleep(0.25)
    return time.monotonic() - started


def test_a_replica_failing_every_job_is_restarted_and_the_next_job_runs(tmp_path, tiny_cache_dir):
    from retouch.models.tiny import build_tiny_models
    from retouch.serving.dispatcher import RayBackend
    from retouch.serving.runtime import deploy_families, ray_temp_dir, start_ray, stop_ray
    from retouch.serving.settings import Settings

    build_tiny_models(tiny_cache_dir)
    settings = Settings(home=tmp_path)
    start_ray(settings)
    try:
        backend = RayBackend(deploy_families(serve_config(tiny_cache_dir)))
        first = diffusion_replicas()
        assert len(first) == 1 and replica_states(DIFFUSION) == {"RUNNING": 1}
        generate = parse_request({"tool": "generator", "input": {"prompt": "a lamp"},
                                  "options": {"quality": "low"}})

        def run(job_id: str, seed: int):
            return backend.run(job_id, generate, {}, seed, lambda f: None, lambda: False)

        for n in range(3):  # three failures in a row make the replica unhealthy
            with pytest.raises(OutOfMemory, match="out of memory"):
                run(f"oom-{n}", OOM_SEED)
            if n < 2:
                assert diffusion_replicas() == first  # fewer failures in a row restart nothing

        replaced = wait_for(lambda: (diffusion_replicas() - first) and not
                            (diffusion_replicas() & first), "the failing replica replaced")
        running = wait_for_replicas(DIFFUSION, lambda states: states == {"RUNNING": 1},
                                    "the new replica running", WAIT_S)
        assert_images(run("after-restart", 1).outputs, (64, 64))
        assert diffusion_replicas().isdisjoint(first)
        with pytest.raises(OutOfMemory):  # the fault follows the job, not the replica
            run("oom-again", OOM_SEED)
        assert_images(run("next", 2).outputs, (64, 64))  # one failure: still healthy
        print(f"\nthe failing replica was replaced {replaced:.1f} s after its third failure; "
              f"the new one ran {running:.1f} s later")
    finally:
        stop_ray()
        shutil.rmtree(ray_temp_dir(settings.home), ignore_errors=True)
