"""time_change: the same scene at another time of day, season and weather.

The main image is fitted to the output size; at the working size its depth map (the store's
depth estimator) conditions a depth ControlNet img2img run whose prompt is the dashboard's
atmosphere string (`prompts.atmosphere_prompt`: time phrase + the seed's exact season and weather
strings, then the client's `text_prompt` as an additional instruction). The depth condition keeps
the layout while the img2img strength leaves room for the new light and weather.
"""

from __future__ import annotations

from PIL import Image

from . import prompts
from .common import RunContext, depth_control_image, pipe_working_size, run_diffusion, \
    steps_for_strength
from .errors import PipelineInputError
from .sizes import fit_to_size, output_size, resize_to
from .vocabulary import DEFAULT_TIME, SEASONS, TIMES, WEATHERS

MAIN = "input.main_image"
ATMOSPHERE_STRENGTH = 0.7
CONTROL_SCALE = 0.8


def check_inputs(request, images: dict[str, Image.Image]) -> None:
    inp = request.input
    if images.get(MAIN) is None:
        raise PipelineInputError(MAIN, "is required")
    if inp.time is not None and inp.time not in TIMES:
        raise PipelineInputError("input.time", f"must be one of {', '.join(TIMES)}")
    if inp.season is not None and inp.season not in SEASONS:
        raise PipelineInputError("input.season", f"must be one of {', '.join(SEASONS)}")
    if inp.weather is not None and inp.weather not in WEATHERS:
        raise PipelineInputError("input.weather", f"must be one of {', '.join(WEATHERS)}")


def render_atmosphere(store, source: Image.Image, size: tuple[int, int], time: str | None,
                      season: str | None, weather: str | None, text_prompt: str, quality: str,
                      progress, ctx: RunContext, seed_offset: int = 0) -> Image.Image:
    """`source` at another time/season/weather, at the output `size` (also used by the carousel)."""
    pipe = store.controlnet_img2img("depth")
    work = pipe_working_size(store, pipe, size)
    init = fit_to_size(source, work)
    control = depth_control_image(store.depth_estimator()(init))
    progress.report(0.1)
    ctx.check_cancelled()
    steps = store.quality_steps[quality]
    result = run_diffusion(
        pipe, progress.stage(0.1, 1.0), ctx, seed_offset=seed_offset,
        prompt=prompts.atmosphere_prompt(time or DEFAULT_TIME, season, weather, text_prompt),
        negative_prompt=prompts.NEGATIVE_PROMPT, image=init, control_image=control,
        strength=ATMOSPHERE_STRENGTH, controlnet_conditioning_scale=CONTROL_SCALE,
        num_inference_steps=steps_for_strength(steps, ATMOSPHERE_STRENGTH))
    return resize_to(result, size)


def time_change(store, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
    check_inputs(request, images)
    inp = request.input
    ctx.report(0.0)
    source = images[MAIN].convert("RGB")
    size = output_size(request.options.aspect_ratio, native_size=store.native_size,
                       source_size=source.size)
    return [render_atmosphere(store, source, size, inp.time, inp.season, inp.weather,
                              inp.text_prompt, request.options.quality, ctx.stage(0.0, 1.0), ctx)]
