"""AIXpose preset actions as data: one recipe per action id, grouped for the catalog.

A recipe says *where* it works (`region`), *how strongly* (`strength`, img2img/inpaint denoising)
and *what* it asks for (`prompt`). `enhance.compose_actions` merges several recipes into one
diffusion pass: prompts are joined, regions are united, the strongest strength wins.

Regions:
- `frame`: the whole picture, re-rendered with a depth ControlNet so walls, windows and
  perspective stay where they are (twilight, lighting, kitchen, facade refresh).
- every other region is a set of ADE20K classes found by the scene segmenter
  (`scene.REGION_CLASSES`: `walls`, `floor`, `ceiling`, `sky`, `ground` (the lawn), `people`,
  `furnishings`, `surfaces`, `windows`; `interior` = all but the view through windows and
  people), grown and feathered, inpainted; every pixel outside the feather is kept bit-exact.
  `keep_layout` recipes (interior styles) inpaint with the depth ControlNet, so the room's
  geometry stays put inside the region.

`exclusive` groups allow one action per instruction (one style, one decoration level).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PipelineInputError
from .vocabulary import ASPECT_RATIOS

SCENE_TYPES = ("interior", "exterior")
SCENE_LOCATIONS = (
    "living_room", "kitchen", "bedroom", "bathroom", "dining_room", "office", "hallway",
    "kids_room", "attic", "basement", "garage", "facade", "garden", "terrace", "balcony", "pool",
    "street", "aerial", "other",
)
REGIONS = ("frame", "walls", "floor", "ceiling", "sky", "ground", "people", "furnishings",
           "surfaces", "windows", "interior")
RESOLUTION_LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}
CUSTOM_PROMPT_CREDITS = 40  # an instruction with a custom prompt and no preset actions
CUSTOM_PROMPT_STRENGTH = 0.6
PHOTO_STYLE = "professional real estate photography, natural light, straight verticals, sharp"


@dataclass(frozen=True)
class ActionGroup:
    id: str
    label: str
    exclusive: bool  # at most one action of this group per instruction


@dataclass(frozen=True)
class ActionRecipe:
    id: str
    group: str
    label: str
    scene_types: tuple[str, ...]
    credits: int
    region: str
    strength: float
    prompt: str
    negative: str = ""
    keep_layout: bool = False  # region passes: inpaint under the depth ControlNet


ACTION_GROUPS: tuple[ActionGroup, ...] = (
    ActionGroup("interior-style", "Interior style", exclusive=True),
    ActionGroup("interior-decoration", "Virtual staging", exclusive=True),
    ActionGroup("decluttering", "Decluttering", exclusive=False),
    ActionGroup("renovation", "Renovation", exclusive=False),
    ActionGroup("exterior", "Exterior improvement", exclusive=False),
    ActionGroup("light", "Light and time of day", exclusive=True),
)

_STYLE = ("{style} interior design, same room, same walls, windows and floor plan, "
          "architectural photography")
_EMPTY = "furniture, clutter, people, distorted walls, warped windows"


def _style(name: str, label: str, style: str) -> ActionRecipe:
    return ActionRecipe(f"interior-style-{name}", "interior-style", label, ("interior",), 40,
                        "interior", 0.55, _STYLE.format(style=style), keep_layout=True)


ACTIONS: tuple[ActionRecipe, ...] = (
    # interior styles: the room restyled (not the view through its windows), layout held by depth
    _style("japandi", "Japandi", "japandi, light oak wood, linen, muted earth tones, minimal low "
                                 "furniture"),
    _style("scandinavian", "Scandinavian", "scandinavian, white walls, pale wood, cosy textiles"),
    _style("modern", "Modern", "modern, clean lines, neutral palette, matte black accents"),
    _style("industrial", "Industrial", "industrial loft, exposed brick, steel, leather"),
    _style("coastal", "Coastal", "coastal, white and sand tones, rattan, soft blue accents"),
    _style("mid-century", "Mid-century", "mid-century modern, walnut, tapered legs, mustard and "
                                         "teal accents"),
    # virtual staging: furniture and decor placed on the floor area
    ActionRecipe("interior-decoration-light", "interior-decoration", "Light staging",
                 ("interior",), 30, "floor", 0.6,
                 "a few tasteful decor pieces, plants, a rug, styled for a listing photo"),
    ActionRecipe("interior-decoration-medium", "interior-decoration", "Medium staging",
                 ("interior",), 40, "floor", 0.75,
                 "virtually staged with a sofa, coffee table, rug, lamps, plants and wall art, "
                 "styled for a listing photo"),
    ActionRecipe("interior-decoration-full", "interior-decoration", "Full staging",
                 ("interior",), 50, "floor", 0.9,
                 "fully furnished and decorated room, complete furniture set, textiles, lighting "
                 "and art, styled for a listing photo"),
    # decluttering
    ActionRecipe("decluttering-light", "decluttering", "Tidy up", ("interior", "exterior"), 30,
                 "surfaces", 0.7, "tidy clean surfaces, no clutter, no loose items",
                 negative="clutter, mess, cables, boxes, laundry"),
    ActionRecipe("decluttering-empty-room", "decluttering", "Empty the room", ("interior",), 50,
                 "furnishings", 0.95, "empty room, bare clean floor and walls, no furniture",
                 negative=_EMPTY),
    ActionRecipe("decluttering-remove-people", "decluttering", "Remove people",
                 ("interior", "exterior"), 30, "people", 0.99,
                 "clean empty background, seamless continuation of the room",
                 negative="person, people, body, face"),
    # renovation
    ActionRecipe("renovation-floor", "renovation", "New floor", ("interior",), 40, "floor", 0.8,
                 "new wide-plank natural oak hardwood floor, freshly renovated"),
    ActionRecipe("renovation-walls", "renovation", "Fresh paint", ("interior",), 40, "walls", 0.7,
                 "freshly painted smooth warm white walls, renovated"),
    ActionRecipe("renovation-kitchen", "renovation", "Kitchen refresh", ("interior",), 60,
                 "frame", 0.6, "renovated modern kitchen, new cabinet fronts, stone countertops, "
                               "integrated appliances, same layout"),
    # exterior
    ActionRecipe("exterior-sky-blue", "exterior", "Blue sky", ("exterior",), 30, "sky", 0.95,
                 "clear blue sky with a few soft white clouds", negative="grey sky, haze"),
    ActionRecipe("exterior-lawn", "exterior", "Green lawn", ("exterior",), 30, "ground", 0.8,
                 "lush healthy green lawn, trimmed edges", negative="dry grass, dirt patches"),
    ActionRecipe("exterior-facade-refresh", "exterior", "Facade refresh", ("exterior",), 40,
                 "frame", 0.45, "freshly cleaned and painted facade, crisp trim, same "
                                "architecture"),
    # light and time of day
    ActionRecipe("exterior-twilight", "light", "Twilight", ("exterior",), 40, "frame", 0.6,
                 "twilight exterior shot, deep blue sky, warm glowing windows, landscape lights"),
    ActionRecipe("light-bright-natural", "light", "Bright natural light", ("interior", "exterior"),
                 20, "frame", 0.3, "bright natural daylight, balanced exposure, HDR real estate "
                                   "photography"),
)

ACTIONS_BY_ID: dict[str, ActionRecipe] = {action.id: action for action in ACTIONS}
GROUPS_BY_ID: dict[str, ActionGroup] = {group.id: group for group in ACTION_GROUPS}

# Quick actions every account can use (accounts add their own over the API).
BUILTIN_QUICK_ACTIONS: tuple[dict, ...] = (
    {"id": "qa_listing_ready", "name": "Listing ready",
     "instruction": {"actions": ["light-bright-natural", "decluttering-light"]}},
    {"id": "qa_stage_japandi", "name": "Stage in Japandi",
     "instruction": {"actions": ["interior-style-japandi", "interior-decoration-medium"]}},
    {"id": "qa_curb_appeal", "name": "Curb appeal",
     "instruction": {"actions": ["exterior-sky-blue", "exterior-lawn"]}},
)


def catalog() -> list[dict]:
    """Action groups with their actions, for `GET /v1/catalog/actions`."""
    return [{"id": group.id, "label": group.label, "exclusive": group.exclusive,
             "actions": [{"id": a.id, "label": a.label, "scene_types": list(a.scene_types),
                          "credits": a.credits, "region": a.region}
                         for a in ACTIONS if a.group == group.id]}
            for group in ACTION_GROUPS]


def action_credits(action_ids: list[str], has_prompt: bool) -> int:
    """Credits one variant costs: the sum of its actions, or the custom-prompt price."""
    total = sum(ACTIONS_BY_ID[a].credits for a in action_ids)
    return total if total else (CUSTOM_PROMPT_CREDITS if has_prompt else 0)


def check_instruction(action_ids: list[str], prompt: str | None, prefix: str,
                      scene_type: str | None = None) -> list[ActionRecipe]:
    """The recipes for `action_ids`, or `PipelineInputError` naming `<prefix>.actions[i]`: an
    unknown id, a duplicate, two actions of an exclusive group, or one that does not fit
    `scene_type`."""
    recipes: list[ActionRecipe] = []
    for i, action_id in enumerate(action_ids):
        field = f"{prefix}.actions[{i}]"
        recipe = ACTIONS_BY_ID.get(action_id)
        if recipe is None:
            raise PipelineInputError(field,
                                     f"unknown action {action_id!r}; see GET /v1/catalog/actions")
        if any(r.id == recipe.id for r in recipes):
            raise PipelineInputError(field, f"action {action_id!r} is listed twice")
        clash = next((r for r in recipes if r.group == recipe.group
                      and GROUPS_BY_ID[recipe.group].exclusive), None)
        if clash is not None:
            raise PipelineInputError(field,
                                     f"{action_id!r} and {clash.id!r} are both in the exclusive "
                                      f"group {recipe.group!r}; pick one")
        if scene_type is not None and scene_type not in recipe.scene_types:
            raise PipelineInputError(field, f"{action_id!r} fits {' or '.join(recipe.scene_types)} "
                                      f"pictures, not {scene_type}")
        recipes.append(recipe)
    if not recipes and not (prompt or "").strip():
        raise PipelineInputError(f"{prefix}.actions", "give at least one action or a prompt")
    return recipes


def enhancement_size(aspect_ratio: str, resolution: str,
                     source_size: tuple[int, int]) -> tuple[int, int]:
    """Output (width, height): the aspect ratio's shape (the source's for `original`) with the
    resolution's long side (1K 1024, 2K 2048, 4K 4096 px); sides even."""
    width, height = ASPECT_RATIOS[aspect_ratio] or source_size
    scale = RESOLUTION_LONG_SIDE[resolution] / max(width, height)
    return (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))
