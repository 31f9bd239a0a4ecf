"""Through a real `retouch serve` (Ray Serve executor): eight same-size generator jobs from two
tenants, submitted at once, are denoised in batches larger than one, and `GET /metrics` says so
in Prometheus text format."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_process import cli_json, retouch_serve

pytestmark = pytest.mark.timeout(300)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_concurrent_jobs_share_batches_and_metrics_show_it(tmp_path, tiny_cache_dir):
    from retouch.models.tiny import build_tiny_models
    from retouch.serving.runtime import ray_temp_dir

    build_tiny_models(tiny_cache_dir)
    env = {"RETOUCH_MODEL_CACHE": str(tiny_cache_dir), "RETOUCH_DISPATCHER_CONCURRENCY": "8",
           "RETOUCH_MAX_BATCH_SIZE": "4", "RETOUCH_BATCH_WAIT_TIMEOUT_S": "0.5"}
    try:
        with retouch_serve(tmp_path, "--executor", "ray", "--profile", "tiny", "--device", "cpu",
                           env=env) as serve, \
                httpx.Client(base_url=serve.base_url, timeout=30) as http:
            secrets = []
            for name in ("tenant-a", "tenant-b"):  # pro plan: 6 slots each
                account = cli_json(tmp_path, "accounts", "create", "--name", name, "--plan",
                                   "pro", "--credits", "10000")
                secrets.append(cli_json(tmp_path, "keys", "create", "--account",
                                        account["id"])["secret"])

            def create(n: int) -> tuple[str, str]:
                secret = secrets[n % 2]
                response = http.post("/api/v1/generations",
                                     headers={"Authorization": f"Bearer {secret}"},
                                     json={"tool": "generator",
                                           "input": {"prompt": f"a lamp, variant {n}"},
                                           "options": {"quality": "low", "seed": n}})
                assert response.status_code == 201, response.text
                return secret, response.json()["generation"]["id"]

            with ThreadPoolExecutor(8) as pool:
                created = list(pool.map(create, range(8)))
            deadline = time.monotonic() + 120
            pending = dict((job_id, secret) for secret, job_id in created)
            while pending and time.monotonic() < deadline:
                for job_id, secret in list(pending.items()):
                    job = http.get(f"/api/v1/generations/{job_id}",
                                   headers={"Authorization": f"Bearer {secret}"}).json()
                    if job["generation"]["status"] in ("completed", "failed"):
                        assert job["generation"]["status"] == "completed", job
                        del pending[job_id]
                time.sleep(0.2)
            assert not pending, f"jobs did not finish: {pending}"

            metrics = http.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            found = samples(metrics.text)
            jobs_run = found[("retouch_pipeline_batch_size_count", ())]
            batch_sizes = found[("retouch_pipeline_batch_size_sum", ())]
            assert jobs_run == 8 and batch_sizes > 8  # some job shared its batch
            assert found[("retouch_pipeline_batch_size_bucket", (("le", "1.0"),))] < 8
            assert found[("retouch_jobs", (("status", "completed"), ("tool", "generator")))] == 8
            assert found[("retouch_queue_depth", ())] == 0
            assert found[("retouch_job_latency_seconds_count", (("tool", "generator"),))] == 8
            assert found[("retouch_pipeline_step_seconds_count", (("tool", "generator"),))] > 0
    finally:
        shutil.rmtree(ray_temp_dir(tmp_path), ignore_errors=True)
