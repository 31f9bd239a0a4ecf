"""`/v1/catalog/...`: the hosted models, the preset actions, the aspect ratios."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from retouch.pipelines import actions
from retouch.pipelines.vocabulary import ASPECT_RATIO_LABELS, ASPECT_RATIOS
from retouch.serving.core.tables import ApiKey
from retouch.serving.deps import READ, ServicesDep

from .deps import aixpose_key, responses
from .responses import AspectRatioList, CatalogActions, CatalogModels, OutputFormatList
from .schemas import list_payload

router = APIRouter(tags=["aixpose catalog"])

# What each registry model does in AIXpose enhancements.
ENHANCEMENT_USES = {
    "base": "whole-frame passes: styles, twilight, light, custom prompts",
    "controlnet_depth": "keeps walls, windows and perspective in whole-frame passes",
    "inpaint": "region passes: staging, decluttering, renovation, sky, lawn",
    "depth": "depth condition and floor/sky masks",
    "segmenter": "people masks (decluttering-remove-people)",
}


@router.get("/catalog/models", response_model=CatalogModels, responses=responses())
def catalog_models(services: ServicesDep,
                   key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    """The models this server hosts (its model profile), with what each is for."""
    from retouch.models.registry import resolve_profile

    settings = services.settings
    profile = resolve_profile(settings.profile, settings.model_overrides)
    data = [{"id": spec.name, "object": "model", "family": spec.family,
             "source": spec.source, "revision": spec.revision, "purpose": spec.purpose,
             "enhancements": ENHANCEMENT_USES.get(spec.name)} for spec in profile.specs.values()]
    return {**list_payload(data), "profile": profile.name}


@router.get("/catalog/actions", response_model=CatalogActions, responses=responses())
def catalog_actions(key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    """Action groups with ids, labels, the scene types each fits and its credit cost per
    variant."""
    return {**list_payload(actions.catalog()), "scene_types": list(actions.SCENE_TYPES),
            "scene_locations": list(actions.SCENE_LOCATIONS),
            "custom_prompt_credits": actions.CUSTOM_PROMPT_CREDITS}


@router.get("/catalog/aspect-ratios", response_model=AspectRatioList,
            responses=responses())
def catalog_aspect_ratios(key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    """Aspect ratios with their output size at each resolution (`original`: the source's)."""
    data = []
    for ratio, fixed in ASPECT_RATIOS.items():
        sizes = None if fixed is None else {
            resolution: list(actions.enhancement_size(ratio, resolution, fixed))
            for resolution in actions.RESOLUTION_LONG_SIDE}
        data.append({"id": ratio, "object": "aspect_ratio", "label": ASPECT_RATIO_LABELS[ratio],
                     "sizes": sizes})
    return list_payload(data)


@router.get("/catalog/output-formats", response_model=OutputFormatList,
            responses=responses())
def catalog_output_formats(key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    """The file formats of enhancements (`output_format`: jpeg, png, webp) and videos (mp4,
    webm), with their media types; the first of each kind is the project default."""
    from retouch.serving.core.storage import MEDIA_TYPES, PICTURE_FORMATS, VIDEO_FORMATS

    data = [{"id": fmt, "object": "output_format", "output": output,
             "media_type": MEDIA_TYPES[fmt], "default": n == 0}
            for output, formats in (("picture", PICTURE_FORMATS), ("video", VIDEO_FORMATS))
            for n, fmt in enumerate(formats)]
    return list_payload(data)
