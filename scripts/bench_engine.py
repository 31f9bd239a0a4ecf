"""Engine benchmark: our generator pipeline vs plain diffusers, per-step time, upscaler MP/s.

    python -m retouch.scripts.bench_engine [--profile tiny|sdxl] [--device cpu|cuda]
        [--dtype fp32|fp16|bf16] [--channels-last] [--compile] [--repeats 5]
        [--quality low] [--aspect-ratio original] [--upscale-size 128] [--threads 1]

Side by side in one run, on the same weights and parameters:
- `TaskRunner.run(generator request)`: our pipeline (prompt templates, working size, step callback,
  progress, resize to the output size);
- a plain `diffusers.StableDiffusionXLPipeline` loaded from the same model folder, doing the same
  work: the same working size, steps and seed, and the same prompt embeddings. On the tiny
  profile both the prompt and the negative prompt are longer than CLIP's 77 tokens (its
  vocabulary is small): our pipeline encodes every chunk while plain diffusers would truncate,
  so plain diffusers is handed the same chunks and encodes them with its own `encode_prompt`
  in every timed call (`bench_common.PlainConditioning`); the two images are compared pixel by
  pixel. The plain call with the text prompt (truncated: less work) is timed for reference;
- the ratio of the two, and the time per denoising step of each;
- the upscaler's throughput in output megapixels per second (`scale` 4 by default).

`--profile sdxl` loads the real SDXL weights (from the Hugging Face cache or the profile's local
overrides); `tiny` builds the tiny twins. Reported numbers are medians over `--repeats`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
PROMPT = "A premium studio product photo of a red sneaker"


def _sync(device: str) -> None:
    from retouch.scripts.bench_common import sync

    sync(device)


def _optimise(pipe, channels_last: bool, compile_unet: bool) -> None:
    import torch

    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=False)


class StepTimer:
    """A `callback_on_step_end` that records when each denoising step ends."""

    def __init__(self, device: str):
        self.device = device
        self.marks: list[float] = []

    def __call__(self, pipe, step, timestep, callback_kwargs):
        _sync(self.device)
        self.marks.append(time.perf_counter())
        return callback_kwargs

    def per_step(self) -> float:
        gaps = [b - a for a, b in zip(self.marks, self.marks[1:])]
        return statistics.median(gaps) if gaps else float("nan")


def _timed(fn, device: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quality", default="medium", choices=("low", "medium", "high"))
    parser.add_argument("--aspect-ratio", default="original")
    parser.add_argument("--upscale-size", type=int, default=128)
    parser.add_argument("--upscale-scale", default="4", choices=("2", "4"))
    parser.add_argument("--model-cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 gives stable numbers on a shared machine)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image

    from retouch.models.store import ModelStore
    from retouch.pipelines import prompts
    from retouch.pipelines.common import RunContext, size_multiple
    from retouch.serving.runner import TaskRunner
    from retouch.serving.tasks import parse_request
    from retouch.pipelines.sizes import output_size, working_size
    from retouch.scripts.bench_common import PlainConditioning, quiet_truncation_warnings

    torch.manual_seed(0)
    store = ModelStore(profile=args.profile, device=args.device, cache_dir=args.model_cache,
                       dtype=DTYPES[args.dtype])
    runner = TaskRunner(store)
    ours_pipe = store.text2img()
    _optimise(ours_pipe, args.channels_last, args.compile)

    spec = store.spec("base")
    plain = StableDiffusionXLPipeline.from_pretrained(
        store.source_of(spec), dtype=store.dtype_for(spec), local_files_only=True,
        **({"subfolder": spec.subfolder} if spec.subfolder else {}))
    plain.to(args.device)
    plain.set_progress_bar_config(disable=True)
    _optimise(plain, args.channels_last, args.compile)

    steps = store.quality_steps[args.quality]
    size = output_size(args.aspect_ratio, native_size=store.native_size)
    work = working_size(size, native_size=store.native_size,
                        multiple=size_multiple(ours_pipe, store.native_size))
    request = parse_request({
        "tool": "generator", "input": {"prompt": PROMPT},
        "options": {"quality": args.quality, "aspect_ratio": args.aspect_ratio, "seed": 1}})

    def run_ours():
        return runner.run(request, {}, RunContext(seed=1))

    plain_timer = StepTimer(args.device)
    prompt, negative = prompts.generator_prompt(PROMPT), prompts.NEGATIVE_PROMPT
    conditioning = PlainConditioning(plain, prompt, negative, args.device)

    def call_plain(**conditioning):
        plain_timer.marks.clear()
        return plain(width=work[0], height=work[1], num_inference_steps=steps, output_type="pil",
                     generator=torch.Generator(device="cpu").manual_seed(1),
                     callback_on_step_end=plain_timer, **conditioning)

    def run_plain():  # equal work
        return call_plain(**conditioning.kwargs())

    def run_plain_truncated():
        return call_plain(prompt=prompt, negative_prompt=negative)

    ours_marks: list[float] = []

    def run_ours_timed():
        ours_marks.clear()
        ctx = RunContext(seed=1, progress=lambda f: (_sync(args.device),
                                                     ours_marks.append(time.perf_counter())))
        return runner.run(request, {}, ctx)

    with torch.inference_mode(), quiet_truncation_warnings():
        ours_image = run_ours()[0]  # warm-up (and compilation)
        plain_image = run_plain().images[0]
        run_plain_truncated()
        ours_times, plain_times, truncated_times = [], [], []
        for _ in range(args.repeats):  # interleaved, so background load hits all alike
            ours_times += _timed(run_ours, args.device, 1)
            plain_times += _timed(run_plain, args.device, 1)
            truncated_times += _timed(run_plain_truncated, args.device, 1)
        run_plain()  # the per-step marks of the equal-work call
        run_ours_timed()
        ours_gaps = [b - a for a, b in zip(ours_marks[1:], ours_marks[2:])][:max(1, steps - 1)]

        source = Image.new("RGB", (args.upscale_size, args.upscale_size), (90, 120, 200))
        up_request = parse_request({
            "tool": "upscaler", "input": {"image": "https://example.invalid/x.png"},
            "options": {"scale": int(args.upscale_scale)}})
        up_images = {"input.image": source}
        output = runner.run(up_request, up_images, RunContext(seed=0))[0]  # warm-up
        up_times = _timed(lambda: runner.run(up_request, up_images, RunContext(seed=0)),
                          args.device, args.repeats)

    ours, base = statistics.median(ours_times), statistics.median(plain_times)
    truncated = statistics.median(truncated_times)
    difference = np.abs(np.asarray(ours_image, dtype=np.int16)
                        - np.asarray(plain_image.convert("RGB").resize(ours_image.size),
                                     dtype=np.int16))
    megapixels = output.size[0] * output.size[1] / 1e6
    flags = [f"profile={args.profile}", f"device={args.device}", f"dtype={args.dtype}",
             f"channels_last={args.channels_last}", f"compile={args.compile}",
             f"threads={torch.get_num_threads()}"]
    print("bench_engine  " + "  ".join(flags))
    print(f"generator: {steps} steps at working size {work[0]}x{work[1]} → output "
          f"{size[0]}x{size[1]} (quality {args.quality}, aspect {args.aspect_ratio})")
    print(f"  {'':28s} {'per job':>10s} {'best':>10s} {'per step':>10s}")
    print(f"  {'retouch generator pipeline':28s} {ours * 1000:8.1f}ms "
          f"{min(ours_times) * 1000:8.1f}ms "
          f"{statistics.median(ours_gaps) * 1000 if ours_gaps else float('nan'):8.2f}ms")
    print(f"  {'plain diffusers SDXL':28s} {base * 1000:8.1f}ms {min(plain_times) * 1000:8.1f}ms "
          f"{plain_timer.per_step() * 1000:8.2f}ms")
    print(f"  {'plain, text truncated at 77':28s} {truncated * 1000:8.1f}ms "
          f"{min(truncated_times) * 1000:8.1f}ms")
    work_note = conditioning.describe()
    print(f"  ratio retouch / plain = {ours / base:.2f}x median, "
          f"{min(ours_times) / min(plain_times):.2f}x best")
    print(f"  equal work: {work_note}; the images differ by at most {int(difference.max())} "
          f"of 255 (mean {difference.mean():.4f})")
    print(f"upscaler x{args.upscale_scale}: {args.upscale_size}px → {output.size[0]}x"
          f"{output.size[1]} in {statistics.median(up_times) * 1000:.1f} ms = "
          f"{megapixels / statistics.median(up_times):.2f} output MP/s")


if __name__ == "__main__":
    main()
