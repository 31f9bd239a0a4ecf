"""The GPU check's CPU mode (tiny twins): it runs every phase, prints one JSON line with the
figures the GPU run reports, and imports nothing serving-side (the GPU machine has no Ray,
FastAPI, SQLAlchemy or pydantic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SERVING_SIDE = ("ray", "fastapi", "sqlalchemy", "pydantic", "retouch.serving")

RUNNER = """
import json, runpy, sys
sys.argv = ["bench_gpu"] + sys.argv[1:]
runpy.run_module("retouch.scripts.bench_gpu", run_name="__main__")
loaded = sorted(name for name in {modules} if name in sys.modules)
print("LOADED " + json.dumps(loaded))
"""


def test_cpu_mode_reports_every_figure(tiny_cache_dir, tmp_path):
    json_out = tmp_path / "bench.json"
    command = [sys.executable, "-c", RUNNER.format(modules=repr(SERVING_SIDE)),
               "--device", "cpu", "--size", "128", "--steps", "2", "--repeats", "1",
               "--upscale-repeats", "2", "--batches", "1,2", "--model-cache",
               str(tiny_cache_dir), "--json-out", str(json_out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    result = json.loads(next(line for line in lines if line.startswith("{")))
    assert result["errors"] == {} and result["skipped"] == []
    for key in ("plain_img_s_b1", "ours_img_s_b1", "ours_img_s_b2", "speedup_b1",
                "tflop_per_image", "tflop_per_unet_step_cfg", "mfu_ours_b1", "mfu_plain_b1",
                "inpaint_s_per_image", "upscale_img_s", "upscale_tiled_vs_untiled_fp32_psnr_db",
                "ours_vs_plain_psnr_db", "peak_memory_gib", "phase_s", "targets"):
        assert key in result, key
    assert result["profile"] == "tiny" and result["dtype"] == "float32"
    assert result["size"] == 128 and result["steps"] == 2 and result["upscale_out"] == 256
    assert 0 < result["tflop_per_unet_step_cfg"] < result["tflop_per_image"]
    assert result["ours_img_s_b1"] > 0 and result["ours_img_s_b2"] > 0
    assert result["black_images_b2"] == 0
    # Same weights, same seed, same embeddings: on CPU the two images are identical.
    assert result["ours_vs_plain_psnr_db"] == "inf"
    assert set(result["targets"]) == {"speedup_b1", "ours_img_s_b1", "ours_img_s_b8",
                                      "upscale_img_s"}
    assert any(line.startswith("| ours, batch 2 |") for line in lines)  # the markdown table
    assert json.loads(json_out.read_text())["ours_img_s_b1"] == result["ours_img_s_b1"]
    loaded = json.loads(next(line for line in lines if line.startswith("LOADED "))[7:])
    assert loaded == []
