"""Autoscaling through the real Serve controller.

The diffusion family, deployed at one replica with `max_replicas: 2`, gets a second replica
while jobs keep it busier than `target_ongoing_requests`, and goes back to one once they stop;
every job sent completes. The upscaler family, at `min_replicas: 0`, starts without a replica
and gets one for its first job (a cold start). Jobs are sent as the dispatcher sends them:
through `RayBackend`, as many in flight as the replicas hold at full scale
(`in_flight_capacity`).

Each diffusion job holds its replica idle for a while first (`fault_job_delay_s`), so the load keeps the
replicas busy without spending the CPU that starting a replica needs: on a loaded 2-core
machine, back-to-back diffusion jobs starve the second replica's start and the Serve
controller's probes. The scaling delays are short and every wait polls `serve.status()` up to
a generous deadline. On in the default run; `RETOUCH_TEST_AUTOSCALING=0` opts out.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time

import pytest
from PIL import Image

from retouch.serving.tasks import parse_request

pytestmark = [pytest.mark.timeout(420),
              pytest.mark.skipif(os.environ.get("RETOUCH_TEST_AUTOSCALING") == "0",
                                 reason="opted out: RETOUCH_TEST_AUTOSCALING=0")]

DIFFUSION = ("retouch-diffusion", "DiffusionDeployment")
UPSCALER = ("retouch-upscaler", "UpscalerDeployment")
FAST = {"metrics_interval_s": 0.5, "look_back_period_s": 2, "upscale_delay_s": 1,
        "downscale_delay_s": 2}
JOB_DELAY_S = 1.0  # each job holds its replica this long, idle
WAIT_S = 150  # for a replica to come up or go away, however loaded the machine


def serve_config(cache_dir):
    from ray.serve.schema import ServeDeploySchema

    from retouch.serving.serve_config import checked_serve_config

    def app(names, options, job_delay_s=0.0):
        (name, deployment), family = names, names[0].removeprefix("retouch-")
        return {"name": name, "route_prefix": None,
                "import_path": f"retouch.serving.deployments:build_{family}_app",
                "args": {"profile": "tiny", "device": "cpu", "cache_dir": str(cache_dir),
                         "fault_job_delay_s": job_delay_s},
                "deployments": [{"name": deployment, "ray_actor_options": {"num_cpus": 0},
                                 "graceful_shutdown_timeout_s": 5,
                                 "graceful_shutdown_wait_loop_s": 0.5,
                                 # a starved replica answers late; it is not broken
                                 "health_check_timeout_s": 120, **options}]}

    return checked_serve_config(ServeDeploySchema.model_validate({
        "proxy_location": "Disabled",
        "applications": [
            app(DIFFUSION, {"max_ongoing_requests": 2, "autoscaling_config": {
                "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, **FAST}},
                JOB_DELAY_S),
            app(UPSCALER, {"autoscaling_config": {
                "min_replicas": 0, "max_replicas": 1, "target_ongoing_requests": 1, **FAST}}),
        ]}))


def replica_states(names) -> dict[str, int]:
    """Replicas per state (RUNNING, STARTING, STOPPING, ...) as the Serve controller reports."""
    from ray import serve

    app, deployment = names
    states = serve.status().applications[app].deployments[deployment].replica_states
    return {state: count for state, count in states.items() if count}


def wait_for_replicas(names, condition, what: str, timeout_s: float = WAIT_S) -> float:
    """Seconds until `condition(replica_states)` holds; on timeout the message lists every
    change of the replica states seen meanwhile."""
    started = time.monotonic()
    seen: list[tuple[float, dict[str, int]]] = []
    while True:
        states = replica_states(names)
        elapsed = time.monotonic() - started
        if not seen or seen[-1][1] != states:
            seen.append((elapsed, states))
        if condition(states):
            return elapsed
        history = ", ".join(f"{at:.0f} s: {states}" for at, states in seen)
        assert elapsed < timeout_s, f"{what} within {timeout_s:g} s; replicas seen: {history}"
        time.sleep(0.25)


def assert_images(outputs: list[bytes], size: tuple[int, int]) -> None:
    assert len(outputs) == 1
    with Image.open(io.BytesIO(outputs[0])) as image:
        assert image.size == size


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_families_scale_up_under_load_back_down_and_from_zero(tmp_path, tiny_cache_dir):
    from retouch.models.tiny import build_tiny_models
    from retouch.serving.dispatcher import RayBackend
    from retouch.serving.runtime import deploy_families, ray_temp_dir, start_ray, stop_ray
    from retouch.serving.serve_config import in_flight_capacity
    from retouch.serving.settings import Settings

    build_tiny_models(tiny_cache_dir)
    settings = Settings(home=tmp_path)
    config = serve_config(tiny_cache_dir)
    in_flight = in_flight_capacity(config)
    assert in_flight == 2 * 2 + 1 * 4  # diffusion: 2 replicas × 2; upscaler: 1 × 4
    started = time.monotonic()
    start_ray(settings)
    stop = threading.Event()
    sent: list[str] = []
    done: dict[str, list[bytes]] = {}
    failures: list[BaseException] = []
    try:
        families = deploy_families(config)
        # Routers started before the workers share the handles: one set of queue reports.
        assert all(handle.is_initialized for handle in families.handles.values())
        backend = RayBackend(families)
        deployed = time.monotonic() - started
        assert replica_states(DIFFUSION) == {"RUNNING": 1}
        assert replica_states(UPSCALER) == {}  # min_replicas: 0: no replica until a job comes
        generate = parse_request({"tool": "generator", "input": {"prompt": "a lamp"},
                                  "options": {"quality": "low"}})

        def keep_busy(worker: int) -> None:  # one dispatcher worker: a job after another
            n = 0
            while not stop.is_set():
                job_id = f"load-{worker}-{n}"
                sent.append(job_id)
                try:
                    done[job_id] = backend.run(job_id, generate, {}, n, lambda f: None,
                                               lambda: False).outputs
                except Exception as exc:  # noqa: BLE001 (reported by the assertion below)
                    failures.append(exc)
                n += 1

        # The diffusion family's share of the in-flight capacity (the upscaler's stays idle).
        workers = [threading.Thread(target=keep_busy, args=(i,), daemon=True)
                   for i in range(in_flight - 4)]
        for thread in workers:
            thread.start()
        up = wait_for_replicas(DIFFUSION, lambda states: states.get("RUNNING") == 2,
                               "a second replica")
        stop.set()
        for thread in workers:
            thread.join(WAIT_S)
        assert not any(thread.is_alive() for thread in workers)
        assert not failures, f"{len(failures)} of {len(sent)} jobs failed: {failures[:3]}"
        assert sorted(done) == sorted(sent)  # every job sent came back with its image
        for outputs in done.values():
            assert_images(outputs, (64, 64))
        down = wait_for_replicas(DIFFUSION, lambda states: states == {"RUNNING": 1},
                                 "back to one replica (the other one gone)")

        cold_started = time.monotonic()
        upscale = parse_request({"tool": "upscaler", "input": {"image": {"upload_id": "u"}},
                                 "options": {"scale": 2}})
        outcome = backend.run("cold-1", upscale, {"input.image": png(40, 30)}, 1,
                              lambda f: None, lambda: False)
        cold = time.monotonic() - cold_started
        assert_images(outcome.outputs, (80, 60))
        assert replica_states(UPSCALER).get("RUNNING") == 1
        print(f"\ndeployed in {deployed:.1f} s; a second replica after {up:.1f} s of load, "
              f"back to one {down:.1f} s after it stopped; {len(done)} jobs; upscaler cold "
              f"start from zero replicas: first job in {cold:.1f} s")
    finally:
        stop.set()
        stop_ray()
        shutil.rmtree(ray_temp_dir(settings.home), ignore_errors=True)
