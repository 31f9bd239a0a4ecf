"""Dynamic batching, side by side: the same generator jobs run one at a time and as batches.

`python -m retouch.scripts.bench_batching [--jobs 8] [--batch-size 4] [--quality low]
[--profile tiny] [--device cpu] [--threads 1]` prints images/s both ways and their ratio, plus
the largest pixel difference between a job's batched and solo output.
"""

from __future__ import annotations

import io
import json
import time

import typer


def main(jobs: int = 8, batch_size: int = 4, quality: str = "low", profile: str = "tiny",
         device: str = "cpu", threads: int = 1, cache_dir: str = "") -> None:
    import numpy as np
    import torch
    from PIL import Image

    from retouch.models.store import ModelStore
    from retouch.serving.replica_io import Job
from retouch.serving.runner import TaskRunner
    from retouch.serving.tasks import parse_request

    torch.set_num_threads(threads)
    store_args = {"profile": profile, "device": device}
    if profile == "tiny":
        from pathlib import Path

        from retouch.models.tiny import build_tiny_models

        cache = Path(cache_dir or Path.home() / ".retouch" / "models")
        build_tiny_models(cache)
        store_args["cache_dir"] = cache
    runner = TaskRunner(ModelStore(**store_args))
    work = [Job(parse_request({"tool": "generator", "input": {"prompt": f"a lamp, variant {n}"},
                               "options": {"quality": quality}}), {}, n,
                lambda f: None, lambda: False) for n in range(jobs)]
    runner.run_jobs(work[:1])  # warm-up: models loaded, first-call costs paid

    started = time.perf_counter()
    solo = [runner.run_jobs([job])[0].result()[0] for job in work]
    solo_s = time.perf_counter() - started
    started = time.perf_counter()
    batched = [outcome.result()[0] for i in range(0, jobs, batch_size)
               for outcome in runner.run_jobs(work[i:i + batch_size])]
    batched_s = time.perf_counter() - started

    def pixels(data: bytes):
        return np.asarray(Image.open(io.BytesIO(data))).astype(int)

    diff = max(int(np.abs(pixels(a) - pixels(b)).max()) for a, b in zip(solo, batched))
    result = {"jobs": jobs, "batch_size": batch_size, "solo_img_per_s": jobs / solo_s,
              "batched_img_per_s": jobs / batched_s, "speedup": solo_s / batched_s,
              "max_pixel_diff": diff, "profile": profile, "device": device, "threads": threads}
    print(f"| one at a time | {result['solo_img_per_s']:.2f} img/s |")
    print(f"| batches of {batch_size} | {result['batched_img_per_s']:.2f} img/s |")
    print(f"| speed-up | {result['speedup']:.2f}× | max pixel difference {diff} |")
    print(json.dumps(result))


if __name__ == "__main__":
    typer.run(main)
