"""Scene pacing: the order and time on screen of a reel's pictures, from what each picture shows
(its `scene_type` and `scene_location`) and the video's `scene_context`.

A property tour the way a listing agent films it: the establishing shot (facade, street, aerial,
any exterior without a location) first, then the entrance, the living spaces, the private rooms,
the outdoor spaces, the utility rooms, and details (`other`) last. Within a step the given order
is kept (a stable sort). Establishing shots and the main living spaces hold longest, details
shortest (`STEPS`). Rooms the `scene_context` names ("sunny terrace", "new kitchen") are the
listing's selling points: they hold `FEATURED_HOLD` times longer.

Pure and deterministic: the same pictures and context give the same plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FEATURED_HOLD = 1.4


@dataclass(frozen=True)
class TourStep:
    rank: int
    hold: float


# scene_location → its step in the tour (relative hold: 1.0 is an even share).
STEPS: dict[str, TourStep] = {
    "facade": TourStep(0, 1.5), "street": TourStep(0, 1.3), "aerial": TourStep(0, 1.5),
    "hallway": TourStep(1, 0.8),
    "living_room": TourStep(2, 1.3), "kitchen": TourStep(2, 1.2), "dining_room": TourStep(2, 1.0),
    "bedroom": TourStep(3, 1.0), "kids_room": TourStep(3, 0.9), "office": TourStep(3, 0.9),
    "bathroom": TourStep(3, 0.8),
    "garden": TourStep(4, 1.2), "terrace": TourStep(4, 1.1), "balcony": TourStep(4, 1.0),
    "pool": TourStep(4, 1.2),
    "attic": TourStep(5, 0.7), "basement": TourStep(5, 0.7), "garage": TourStep(5, 0.7),
    "other": TourStep(6, 0.6),
}
EXTERIOR_WITHOUT_LOCATION = TourStep(0, 1.5)  # an exterior picture: the establishing shot
INTERIOR_WITHOUT_LOCATION = TourStep(2, 1.0)

# Words in a scene_context that name a location (besides the location's own name).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "facade": ("exterior", "curb appeal"),
    "aerial": ("drone", "from above"),
    "hallway": ("hall", "entrance", "entry", "foyer"),
    "living_room": ("living", "lounge", "sitting room"),
    "kitchen": ("kitchenette", "cooking"),
    "dining_room": ("dining",),
    "bedroom": ("bedrooms", "master suite", "sleeping"),
    "kids_room": ("nursery", "children", "kids"),
    "office": ("study", "home office", "workspace"),
    "bathroom": ("bath", "shower", "ensuite", "en-suite"),
    "garden": ("yard", "lawn", "backyard"),
    "terrace": ("patio", "deck", "roof terrace"),
    "balcony": ("balconies",),
    "pool": ("swimming", "swimming pool"),
    "garage": ("parking", "carport"),
    "attic": ("loft",),
    "basement": ("cellar",),
}


@dataclass(frozen=True)
class PictureScene:
    scene_type: str | None
    scene_location: str | None


def tour_step(scene: PictureScene) -> TourStep:
    if scene.scene_location in STEPS:
        return STEPS[scene.scene_location]
    if scene.scene_type == "exterior":
        return EXTERIOR_WITHOUT_LOCATION
    return INTERIOR_WITHOUT_LOCATION


def featured_locations(scene_context: str) -> set[str]:
    """The locations `scene_context` names (whole words, case-insensitive)."""
    text = scene_context.lower()
    found = set()
    for location in STEPS:
        words = (location.replace("_", " "), *SYNONYMS.get(location, ()))
        if any(re.search(rf"\b{re.escape(word)}\b", text) for word in words):
            found.add(location)
    return found


def plan_tour(scenes: list[PictureScene], scene_context: str) -> list[tuple[int, float]]:
    """`(index into scenes, relative hold)` in tour order."""
    featured = featured_locations(scene_context)
    steps = [tour_step(scene) for scene in scenes]
    order = sorted(range(len(scenes)), key=lambda i: (steps[i].rank, i))
    return [(i, round(steps[i].hold * (FEATURED_HOLD if scenes[i].scene_location in featured
                                       else 1.0), 3)) for i in order]
