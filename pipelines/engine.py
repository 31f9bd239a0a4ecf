"""`Engine(store).run(request, images, ctx)`: one entry point for every Wixma tool, mode and filter.

`request` is a typed request from `requests.parse_generation_request`; `images` maps the keys of
`request.image_fields()` ("input.main_image", "input.images[0]", "input.secondary_images[1]",
"input.mask_image", "input.image") to decoded PIL images. `ctx.seed` is authoritative (the caller
picks one when `options.seed` is None). Returns `request.output_count` images. On CPU the same
seed and inputs give the same pixels, hence the same encoded bytes.
"""

from __future__ import annotations

from typing import Callable

from PIL import Image

from . import angle, atmosphere, carousel, edit, erase, filters, generate, placement
from .common import RunContext
from .errors import InvalidInput

Pipeline = Callable[..., list[Image.Image]]

PHOTOGRAPHER_PIPELINES: dict[str, Pipeline] = {
    "person_placement": placement.person_placement,
    "angle_change": angle.angle_change,
    "cloth_change": placement.cloth_change,
    "time_change": atmosphere.time_change,
    "location_change": placement.location_change,
    "carousel": carousel.carousel,
    "object_placement": placement.object_placement,
    "erase_edit": erase.erase_edit,
}


class Engine:
    def __init__(self, store):
        self.store = store

    def pipeline_for(self, request) -> Pipeline:
        tool = request.tool
        if tool == "generator":
            return generate.generate
        if tool == "editor":
            return edit.edit
        if tool == "ai_filter":
            return filters.ai_filter
        if tool == "upscaler":
            return self._upscale
        if tool == "enhance":  # AIXpose enhancements
            from .enhance import enhance

            return enhance
        if tool == "photographer":
            mode = request.options.mode
            if mode not in PHOTOGRAPHER_PIPELINES:
                raise InvalidInput("options.mode", f"unknown mode {mode!r}")
            return PHOTOGRAPHER_PIPELINES[mode]
        raise InvalidInput("tool", f"unknown tool {tool!r}")

    def run(self, request, images: dict[str, Image.Image], ctx: RunContext) -> list[Image.Image]:
        pipeline = self.pipeline_for(request)
        for field in request.image_fields():
            if images.get(field) is None:
                raise InvalidInput(field, "image is missing")
        ctx.check_cancelled()
        outputs = pipeline(self.store, request, images, ctx)
        if len(outputs) != request.output_count:
            raise RuntimeError(f"{request.tool} produced {len(outputs)} images, "
                               f"expected {request.output_count}")
        ctx.report(1.0)
        return outputs

    @staticmethod
    def _upscale(store, request, images, ctx: RunContext) -> list[Image.Image]:
        from .upscale import upscale  # owned by the models side; imported when used

        return [upscale(store, images["input.image"], request.options.scale,
                        request.options.noise_scale, ctx)]
