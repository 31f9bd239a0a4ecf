"""GPU check: our engine against plain diffusers SDXL on one GPU, in one run of a few minutes.

    python -m retouch.scripts.bench_gpu                      # sdxl-random, CUDA, bf16, 1024², 30 steps
    python -m retouch.scripts.bench_gpu --device cpu --size 128 --steps 2   # tiny, CI-sized

Measured, on the same weights and the same device:
- plain diffusers `StableDiffusionXLPipeline` (a store with `AccelSettings(enabled=False)`: no
  fused QKV, no channels_last, diffusers' defaults) against our generator's diffusion call
  (`common.run_diffusion`: chunked prompt embeddings with the negative cached, the CUDA defaults
  of `models.accel`), batch 1, CFG on (guidance 5), both given the same prompt embeddings
  (`bench_common.PlainConditioning`);
- our pipeline at batch 4 / 8: the dynamic-batching path (`batch.run_diffusion_batch`: that
  many jobs, each with its own seed, embeddings and progress, in one denoising call);
- FLOPs per image counted with `torch.utils.flop_counter.FlopCounterMode` on a one-step call
  (text encoders + one UNet step with CFG + VAE decode; the UNet's share, counted per module,
  is added for each further step), and MFU = FLOPs per image × images/s ÷ `--peak-tflops`;
- erase_edit's inpaint (`erase.inpaint_region` at the working size, `--steps` steps run);
- the upscaler ×4 (`--upscale-size` → 4×, noise_scale 0.1: general-x4v3 interpolated with its
  weak-denoise twin), images/s, and the PSNR of its tiled (device defaults) output against one
  untiled float32 pass of the same network;
- peak GPU memory per phase and the memory held after loading.

Prints one JSON line, then a markdown table. Phases run in order until `--budget-s` is spent;
later ones are reported as skipped, and a phase that fails records its error and the rest go on.
Imports only torch, diffusers, transformers, PIL, numpy and retouch.models / retouch.pipelines
(no Ray, FastAPI, SQLAlchemy or pydantic), so it runs where only those are installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable

PROMPT = "A premium studio product photo of a red sneaker on a concrete plinth, soft daylight"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
COMPASS_TFLOP_PER_IMAGE = 416.0  # SDXL 1024², 30 steps with CFG, VAE decode included
TARGETS = {"speedup_b1": 1.4, "ours_img_s_b1": 1.0, "ours_img_s_b8": 2.0, "upscale_img_s": 25.0}


def log(message: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Phases:
    """Runs named phases in order within a time budget; records seconds, errors and skips."""

    def __init__(self, budget_s: float, device: str, checkpoint: Callable[[], None]):
        self.checkpoint = checkpoint  # called after every phase (partial results survive)
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.device = device
        self.seconds: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.skipped: list[str] = []
        self.peak_memory_gib: dict[str, float] = {}

    def run(self, name: str, body: Callable[[], None]) -> None:
        import torch

        elapsed = time.perf_counter() - self.started
        if elapsed > self.budget_s:
            self.skipped.append(name)
            log(f"skip {name}: {elapsed:.0f}s of the {self.budget_s:.0f}s budget spent")
            return
        log(f"{name} ...")
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            body()
        except Exception as error:  # noqa: BLE001 - one failed phase must not lose the run
            self.errors[name] = f"{type(error).__name__}: {error}"[:500]
            traceback.print_exc(file=sys.stderr)
        self.seconds[name] = round(time.perf_counter() - started, 2)
        if cuda:
            self.peak_memory_gib[name] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        log(f"{name} done in {self.seconds[name]:.1f}s")
        self.checkpoint()


def timed(fn: Callable[[], Any], device: str, repeats: int) -> list[float]:
    from retouch.scripts.bench_common import sync

    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def psnr(first: Any, second: Any) -> float | str:
    """PSNR in dB of two 8-bit images ("inf" when they are equal: JSON has no infinity)."""
    import numpy as np

    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return "inf" if mse == 0 else round(10 * np.log10(255.0 ** 2 / mse), 2)


def sample_photo(width: int, height: int, seed: int = 0):
    """Gradients, a hard-edged block and grain: something for inpaint and upscaler to work on."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 230 / width, y * 230 / height, (x + y) * 115 / (width + height)], -1)
    rgb[height // 4: height // 2, width // 3: 2 * width // 3] = (240, 200, 40)
    rgb = rgb + rng.normal(0, 8, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile", default=None, help="default: sdxl-random on CUDA, tiny on CPU")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--size", type=int, default=None, help="square side; default 1024 (CPU 128)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls at batch 1")
    parser.add_argument("--upscale-size", type=int, default=None, help="default 512 (CPU 64)")
    parser.add_argument("--upscale-repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile UNet + VAE decoder")
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="dense bf16 peak for MFU (H200 measured: about 790)")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--model-cache", default=None)
    parser.add_argument("--json-out", default=None, help="also write the JSON line here")
    args = parser.parse_args(argv)
    cpu = not args.device.startswith("cuda")
    args.profile = args.profile or ("tiny" if cpu else "sdxl-random")
    args.size = args.size or (128 if cpu else 1024)
    args.upscale_size = args.upscale_size or (64 if cpu else 512)
    args.batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    from retouch.models.accel import AccelSettings
    from retouch.models.store import ModelStore
    from retouch.pipelines import erase, prompts
    from retouch.pipelines.batch import run_diffusion_batch
    from retouch.pipelines.common import RunContext, run_diffusion
    from retouch.pipelines.erase import inpaint_region
    from retouch.pipelines.sizes import resize_to
    from retouch.pipelines.upscale import (X4_MODEL, inference_network, run_tiled,
                                           upscale as upscale_image)
    from retouch.scripts.bench_common import PlainConditioning, quiet_truncation_warnings

    device, size, steps = args.device, (args.size, args.size), args.steps
    prompt, negative = prompts.generator_prompt(PROMPT), prompts.NEGATIVE_PROMPT
    cuda = device.startswith("cuda")
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "profile": args.profile, "dtype": DTYPES[args.dtype], "size": args.size,
        "steps": steps, "compile": args.compile, "torch": torch.__version__,
        "peak_tflops": args.peak_tflops}
    state: dict[str, Any] = {}

    def checkpoint() -> None:
        if args.json_out:
            with open(args.json_out, "w") as handle:
                handle.write(json.dumps({**finish(result, phases, args), "partial": True},
                                        sort_keys=True) + "\n")

    phases = Phases(args.budget_s, device, checkpoint)
    store_kwargs = {"profile": args.profile, "device": device, "dtype": DTYPES[args.dtype]}
    if args.model_cache:
        store_kwargs["cache_dir"] = args.model_cache

    def setup() -> None:
        import diffusers

        result["diffusers"] = diffusers.__version__
        ours_settings = AccelSettings.from_env()
        if args.compile:
            ours_settings = dataclasses.replace(ours_settings, compile=True)
        state["store"] = store = ModelStore(**store_kwargs, accel=ours_settings)
        state["plain_store"] = ModelStore(**store_kwargs, accel=AccelSettings(enabled=False))
        state["ours"] = store.text2img()
        result["dtype"] = str(state["ours"].unet.dtype).replace("torch.", "")  # CPU: float32
        if cuda:
            torch.cuda.synchronize()
            result["memory_text2img_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        state["plain"] = state["plain_store"].text2img()
        state["conditioning"] = PlainConditioning(state["plain"], prompt, negative, device)
        result["equal_work"] = state["conditioning"].describe()

    def call_plain(steps_run: int, **extra: Any):
        return state["plain"](width=size[0], height=size[1], num_inference_steps=steps_run,
                              generator=torch.Generator().manual_seed(1), output_type="pil",
                              **state["conditioning"].kwargs(), **extra).images[0]

    def call_ours(steps_run: int):
        ctx = RunContext(seed=1)
        image = run_diffusion(state["ours"], ctx.stage(0.0, 1.0), ctx, prompt=prompt,
                              negative_prompt=negative, width=size[0], height=size[1],
                              num_inference_steps=steps_run)
        return resize_to(image, size)

    def plain_b1() -> None:
        call_plain(2)  # warm-up: cuDNN algorithm choice, allocator
        times = timed(lambda: state.setdefault("plain_image", call_plain(steps)), device, 1)
        times += timed(lambda: call_plain(steps), device, args.repeats - 1)
        result["plain_s_b1"] = round(statistics.median(times), 3)
        result["plain_img_s_b1"] = round(1 / statistics.median(times), 3)

    def ours_b1() -> None:
        call_ours(2)  # warm-up (compiles when --compile)
        times = timed(lambda: state.setdefault("ours_image", call_ours(steps)), device, 1)
        times += timed(lambda: call_ours(steps), device, args.repeats - 1)
        result["ours_s_b1"] = round(statistics.median(times), 3)
        result["ours_img_s_b1"] = round(1 / statistics.median(times), 3)
        if "plain_img_s_b1" in result:
            result["speedup_b1"] = round(result["ours_img_s_b1"] / result["plain_img_s_b1"], 3)
        if "plain_image" in state:  # the same weights and seed: close, not equal (fused QKV)
            result["ours_vs_plain_psnr_db"] = psnr(state["ours_image"], state["plain_image"])

    def ours_batch(batch: int) -> Callable[[], None]:
        def body() -> None:
            def call() -> None:  # the dynamic-batching path: one denoising call for `batch` jobs
                contexts = [RunContext(seed=i) for i in range(batch)]
                images = run_diffusion_batch(
                    state["ours"], contexts, [prompt] * batch, [negative] * batch,
                    width=size[0], height=size[1], num_inference_steps=steps)
                state[f"black_b{batch}"] = sum(  # NaN latents decode to black
                    int(not np.asarray(image).any()) for image in images)

            call()  # warm-up at this batch size
            seconds = statistics.median(timed(call, device, 1))
            result[f"ours_img_s_b{batch}"] = round(batch / seconds, 3)
            result[f"black_images_b{batch}"] = state[f"black_b{batch}"]
        return body

    def flops() -> None:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:  # one step: text encoders, UNet, VAE
            call_plain(1)
        total = counter.get_total_flops()
        per_step = sum(counter.get_flop_counts().get(type(state["plain"].unet).__name__,
                                                      {}).values())
        per_image = total + (steps - 1) * per_step
        result["tflop_per_unet_step_cfg"] = round(per_step / 1e12, 4)
        result["tflop_per_image"] = round(per_image / 1e12, 4)
        result["compass_tflop_per_image"] = COMPASS_TFLOP_PER_IMAGE

    def inpaint() -> None:
        store = state["store"]
        base = sample_photo(*size)
        mask = np.zeros((size[1], size[0]), dtype=bool)
        mask[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = True
        text, negative_text = prompts.erase_prompt("")

        def call(steps_run: int) -> None:
            inpaint_region(store, RunContext(seed=2), base, mask, text, negative_text, steps_run)

        call(2)
        times = timed(lambda: call(steps), device, 2)
        result["inpaint_s_per_image"] = round(statistics.median(times), 3)
        result["inpaint_steps"] = steps
        result["inpaint_strength"] = erase.INPAINT_STRENGTH

    def upscaler() -> None:
        store = state["store"]
        source = sample_photo(args.upscale_size, args.upscale_size, seed=3)
        for _ in range(2):
            output = upscale_image(store, source, 4, 0.1)
        times = timed(lambda: upscale_image(store, source, 4, 0.1), device, args.upscale_repeats)
        result["upscale_in"] = args.upscale_size
        result["upscale_out"] = output.size[0]
        result["upscale_img_s"] = round(1 / statistics.median(times), 2)
        # Tiled at the device defaults (half precision, batched tiles on CUDA) against one
        # untiled float32 pass of the same network.
        network = store.upscaler(X4_MODEL)
        full = inference_network(network, torch.float32)
        tiled = upscale_image(store, source, 4, 0.5)  # noise_scale 0.5: general-x4v3 alone
        whole = run_tiled(full, np.asarray(source), 4, RunContext(seed=0),
                          tile_size=4 * args.upscale_size, tile_overlap=0, device=device)
        result["upscale_tiled_vs_untiled_fp32_psnr_db"] = psnr(
            np.asarray(tiled), np.clip(np.rint(whole), 0, 255))

    with torch.inference_mode(), quiet_truncation_warnings():
        phases.run("setup", setup)
        if "ours" in state:
            phases.run("plain_b1", plain_b1)
            phases.run("ours_b1", ours_b1)
            phases.run("flops", flops)
            phases.run("upscale", upscaler)
            phases.run("inpaint", inpaint)
            for batch in args.batch_sizes:
                if batch > 1:
                    phases.run(f"ours_b{batch}", ours_batch(batch))

    result = finish(result, phases, args)
    line = json.dumps(result, sort_keys=True)
    print(line, flush=True)
    if args.json_out:
        with open(args.json_out, "w") as handle:
            handle.write(line + "\n")
    print(markdown_table(result))
    return result


def finish(result: dict[str, Any], phases: Phases, args: argparse.Namespace) -> dict[str, Any]:
    """`result` with MFU, targets and the phase records added."""
    result = dict(result)
    if "tflop_per_image" in result:
        for key in [k for k in result if k.startswith("ours_img_s_b") or k == "plain_img_s_b1"]:
            result[f"mfu_{key.replace('_img_s', '')}"] = round(
                result["tflop_per_image"] * result[key] / args.peak_tflops, 4)
    result["targets"] = {key: {"target": target, "met": result.get(key, 0) >= target}
                         for key, target in TARGETS.items()}
    result["phase_s"] = dict(phases.seconds)
    result["peak_memory_gib"] = dict(phases.peak_memory_gib)
    result["errors"] = dict(phases.errors)
    result["skipped"] = list(phases.skipped)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    def cell(key: str, unit: str = "") -> str:
        value = result.get(key)
        return "—" if value is None else f"{value}{unit}"

    rows = [
        ("plain diffusers SDXL, batch 1", cell("plain_img_s_b1", " img/s"), cell("mfu_plain_b1")),
        ("ours, batch 1", cell("ours_img_s_b1", " img/s"), cell("mfu_ours_b1")),
        ("ours / plain, batch 1", cell("speedup_b1", "×"), "target ≥ 1.4×"),
    ]
    for key in sorted(k for k in result if k.startswith("ours_img_s_b") and k != "ours_img_s_b1"):
        batch = key.rsplit("_b", 1)[1]
        rows.append((f"ours, batch {batch}", cell(key, " img/s"), cell(f"mfu_ours_b{batch}")))
    rows += [
        ("counted TFLOP per image (compass ≈416)", cell("tflop_per_image"), ""),
        ("erase_edit inpaint", cell("inpaint_s_per_image", " s/image"), ""),
        (f"upscaler ×4, {cell('upscale_in')}→{cell('upscale_out')}", cell("upscale_img_s", " img/s"),
         f"tiled vs untiled fp32: {cell('upscale_tiled_vs_untiled_fp32_psnr_db', ' dB')}"),
        ("memory after loading text2img", cell("memory_text2img_gib", " GiB"), ""),
        ("peak memory (max over phases)",
         f"{max(result.get('peak_memory_gib', {}).values(), default=0)} GiB", ""),
    ]
    header = (f"{result['device']}, {result['profile']}, {result['dtype']}, "
              f"{result['size']}², {result['steps']} steps, CFG, compile={result['compile']}")
    lines = [f"**{header}**", "", "| | throughput | MFU / note |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {note} |" for name, value, note in rows]
    if result.get("errors"):
        lines.append(f"\nerrors: {result['errors']}")
    if result.get("skipped"):
        lines.append(f"\nskipped (budget): {result['skipped']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
