"""Where things stand in a photo, from its depth map (pure geometry, no models).

Camera: the pinhole of `angle.py` (horizontal field of view `FOV_DEGREES`; axes x right, y down,
z forward). Depth is the scene depth `angle.depth_from_relative` makes of the estimator's output.

- `fit_ground_plane(depth)`: the floor is fitted to the lower image (rows below
  `FLOOR_SEARCH_FROM`) as y = a·x + b·z + c, by least squares in image terms (divided by z:
  (v−cy)/f = a(u−cx)/f + b + c/z), first on its bottom quarter, then refitted on the inliers of
  the whole lower image (pixels within `FLOOR_TOLERANCE` of the height, ≥ 1.5 px, of the row
  where the floor has their depth) `FIT_ROUNDS` times. It is accepted when most of the lower
  image lies on it, it is near horizontal (|n_y| ≥ `MIN_UPRIGHT`) and below the camera. Its
  horizon is where it vanishes (row cy + b·f at the centre column); `floor` marks the pixels on
  it. Otherwise a nominal floor stands in: horizon at `FALLBACK_HORIZON` of the height, camera
  height 1 and everything below the horizon counted as floor.
- `person_height_px(plane, foot)`: a person of `PERSON_TO_CAMERA_HEIGHT` × the camera height
  (1.7 m beside a nominal 1.5 m camera) standing at the foot pixel, projected: the foot point is
  the floor point under the pixel, the head that point raised along the floor normal.
- `choose_person_box(...)`: candidate foot points on a grid over the floor; each gives a box (the
  person's height at that depth, the cut-out's aspect). The cost prefers boxes that overlap no
  obstacle (below the horizon, off the floor, and at the feet's depth or nearer, within
  `COLLISION_MARGIN`: a wall or furniture behind the person is background), then the
  position asked for in `text_prompt` (left/right/centre across, near/far in depth; default
  centre, `DEFAULT_DISTANCE` of the way from the horizon to the bottom).
- `choose_object_box(...)`: an object stands on a free horizontal surface: the floor, or pixels
  whose depth normal points up (a table top). Candidate base points on those surfaces give a
  square box sized by depth; the cost prefers support under the box's base, no occupied pixels,
  and the prompt's words. Words that put it off any surface ("top", "above", "sky", "wall")
  keep the word box (`placement.object_box`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .angle import focal_length

FLOOR_SEARCH_FROM = 0.55  # fraction of the height: the lower image is searched for the floor
FLOOR_TOLERANCE = 0.03
FIT_ROUNDS = 3
MIN_INLIERS = 0.4
MIN_UPRIGHT = 0.8
FALLBACK_HORIZON = 0.4
PERSON_TO_CAMERA_HEIGHT = 1.7 / 1.5
DEFAULT_DISTANCE = 0.65
NEAR_DISTANCE, FAR_DISTANCE = 0.9, 0.3
SIDE_TARGETS = {"left": 0.25, "right": 0.75}
OVERLAP_WEIGHT = 4.0
COLLISION_MARGIN = 0.15  # an obstacle up to 15 % deeper than the feet is still in the way
GRID = 24
OBJECT_SIZE = 0.3  # box side (fraction of the height) at the median surface depth
UPWARD_NORMAL = 0.85


@dataclass(frozen=True)
class GroundPlane:
    normal: np.ndarray  # (a, -1, b) / |.|: unit, pointing up (−y)
    offset: float  # n·X + offset = 0 on the floor; offset > 0: the floor is below the camera
    horizon_row: float  # at the centre column
    floor: np.ndarray  # bool HxW
    fitted: bool
    focal: float
    centre: tuple[float, float]  # (cx, cy)
    depth: np.ndarray  # the scene depth it was fitted to

    @property
    def camera_height(self) -> float:
        return self.offset


def unproject(depth: np.ndarray) -> np.ndarray:
    """HxWx3 camera-space points of a depth map."""
    h, w = depth.shape
    f = focal_length(w)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = depth.astype(np.float64)
    return np.stack([(u - cx) * z / f, (v - cy) * z / f, z], axis=-1)


def fit_ground_plane(depth: np.ndarray) -> GroundPlane:
    h, w = depth.shape
    f = focal_length(w)
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    # y = a·x + b·z + c divided by z is linear in image terms: (v−cy)/f = a·(u−cx)/f + b + c/z,
    # so the fit weighs every pixel alike and its residual is in pixels.
    design = np.stack([(u - centre[0]) / f, np.ones_like(u), 1.0 / depth.astype(np.float64)],
                      axis=-1)
    target = (v - centre[1]) / f
    tolerance = max(1.5, FLOOR_TOLERANCE * h) / f
    start = int(FLOOR_SEARCH_FROM * h)
    lower_x, lower_t = design[start:].reshape(-1, 3), target[start:].ravel()
    # Seed the fit with the bottom rows (the floor if there is one), then grow it by inliers.
    keep = np.zeros((h - start, w), dtype=bool)
    keep[-max(2, (h - start) // 4):] = True
    keep = keep.ravel()
    coef = None
    for _ in range(FIT_ROUNDS):
        if keep.sum() < 3:
            break
        coef, *_ = np.linalg.lstsq(lower_x[keep], lower_t[keep], rcond=None)
        keep = np.abs(lower_x @ coef - lower_t) < tolerance
    if coef is not None:
        a, b, c = coef
        norm = float(np.sqrt(a * a + 1 + b * b))
        if keep.mean() >= MIN_INLIERS and 1.0 / norm >= MIN_UPRIGHT and c > 0:
            horizon = centre[1] + b * f
            floor = np.abs(design @ coef - target) < tolerance
            floor &= v > horizon
            return GroundPlane(np.array([a, -1.0, b]) / norm, c / norm, float(horizon), floor,
                               True, f, centre, depth)
    horizon = FALLBACK_HORIZON * h
    floor = np.broadcast_to(np.arange(h)[:, None] > horizon, (h, w)).copy()
    # Nominal floor: level camera at height 1 whose horizon is at FALLBACK_HORIZON.
    b = (horizon - centre[1]) / f
    norm = float(np.sqrt(1 + b * b))
    return GroundPlane(np.array([0.0, -1.0, b]) / norm, 1.0 / norm, float(horizon), floor, False,
                       f, centre, depth)


def floor_point(plane: GroundPlane, pixel: tuple[float, float]) -> np.ndarray | None:
    """The floor point seen at `pixel` (u, v); None above the horizon."""
    u, v = pixel
    cx, cy = plane.centre
    ray = np.array([(u - cx) / plane.focal, (v - cy) / plane.focal, 1.0])
    along = float(plane.normal @ ray)
    if along >= -1e-9:
        return None
    return ray * (-plane.offset / along)


def project(plane: GroundPlane, point: np.ndarray) -> tuple[float, float]:
    cx, cy = plane.centre
    return (cx + plane.focal * point[0] / point[2], cy + plane.focal * point[1] / point[2])


def person_height_px(plane: GroundPlane, foot: tuple[float, float]) -> float:
    """Pixel height of a person standing at the foot pixel (0 above the horizon)."""
    base = floor_point(plane, foot)
    if base is None:
        return 0.0
    head = base + PERSON_TO_CAMERA_HEIGHT * plane.camera_height * plane.normal
    if head[2] <= 1e-6:
        return float("inf")
    return float(foot[1] - project(plane, head)[1])


def occupied_mask(plane: GroundPlane) -> np.ndarray:
    """Below the horizon but not floor: things standing on the floor."""
    h, _ = plane.floor.shape
    below = np.arange(h)[:, None] > plane.horizon_row + 1
    return below & ~plane.floor


def placement_words(text_prompt: str) -> tuple[float, float]:
    """(across, distance) targets: across 0..1 of the width, distance 0 (horizon)..1 (bottom)."""
    words = text_prompt.lower()
    across = 0.5
    for word, target in SIDE_TARGETS.items():
        if word in words:
            across = target
            break
    distance = DEFAULT_DISTANCE
    if any(word in words for word in ("near", "close", "foreground", "front of")):
        distance = NEAR_DISTANCE
    elif any(word in words for word in ("far", "distance", "background", "behind")):
        distance = FAR_DISTANCE
    return across, distance


@dataclass(frozen=True)
class Placement:
    box: tuple[int, int, int, int]  # left, top, right, bottom (pixels)
    foot: tuple[int, int]  # (u, v): the point the box stands on
    plane: GroundPlane
    overlap: float  # share of the box over occupied pixels


def _box_overlap(occupied_integral: np.ndarray, box) -> float:
    left, top, right, bottom = box
    area = max(1, (right - left) * (bottom - top))
    s = occupied_integral
    return float(s[bottom, right] - s[top, right] - s[bottom, left] + s[top, left]) / area


def _integral(mask: np.ndarray) -> np.ndarray:
    return np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))


def choose_person_box(plane: GroundPlane, text_prompt: str, aspect: float,
                      min_height: float = 0.08) -> Placement | None:
    """The best box for a person of width/height `aspect`; None when no floor point fits."""
    h, w = plane.floor.shape
    across, distance = placement_words(text_prompt)
    occupied = occupied_mask(plane)
    horizon = max(plane.horizon_row, 0.0)
    best, best_cost = None, float("inf")
    for v in np.linspace(horizon + 1, h - 1, GRID).round().astype(int):
        for u in np.linspace(0, w - 1, GRID).round().astype(int):
            if not plane.floor[v, u]:
                continue
            height = person_height_px(plane, (u, v))
            if not min_height * h <= height <= v + 1:  # too small, or the head leaves the frame
                continue
            width = max(1.0, height * aspect)
            box = (int(round(u - width / 2)), int(round(v + 1 - height)),
                   int(round(u + width / 2)), int(v) + 1)
            if box[0] < 0 or box[2] > w:
                continue
            # In the way: things standing on the floor at the person's depth or in front of it
            # (a wall or a cupboard behind the person is background, not an obstacle).
            window = (slice(box[1], box[3]), slice(box[0], box[2]))
            foot_depth = plane.depth[v, u]
            overlap = float((occupied[window] &
                             (plane.depth[window] <= foot_depth * (1 + COLLISION_MARGIN))).mean())
            depth_pos = (v - horizon) / max(1.0, h - 1 - horizon)
            cost = OVERLAP_WEIGHT * overlap + abs(u / (w - 1) - across) + abs(depth_pos - distance)
            if cost < best_cost:
                best, best_cost = Placement(box, (int(u), int(v)), plane, overlap), cost
    return best


def surface_mask(depth: np.ndarray) -> np.ndarray:
    """Pixels of horizontal surfaces (their depth normal points up), e.g. floors and table tops."""
    points = unproject(depth)
    du = np.gradient(points, axis=1)
    dv = np.gradient(points, axis=0)
    normal = np.cross(du, dv)
    length = np.linalg.norm(normal, axis=-1) + 1e-12
    return np.abs(normal[..., 1]) / length >= UPWARD_NORMAL


def choose_object_box(depth: np.ndarray, text_prompt: str,
                      plane: GroundPlane | None = None) -> Placement | None:
    """A square box standing on free horizontal surface, sized by depth; None when there is no
    surface to stand on."""
    h, w = depth.shape
    plane = plane or fit_ground_plane(depth)
    surface = surface_mask(depth) | plane.floor
    if surface.mean() < 0.02:
        return None
    occupied = _integral(occupied_mask(plane) & ~surface)
    support = _integral(surface)
    reference = float(np.median(depth[surface]))
    across, distance = placement_words(text_prompt)
    rows = np.nonzero(surface.any(axis=1))[0]
    top_row = rows.min()
    best, best_cost = None, float("inf")
    for v in np.linspace(top_row, h - 1, GRID).round().astype(int):
        for u in np.linspace(0, w - 1, GRID).round().astype(int):
            if not surface[v, u]:
                continue
            side = float(np.clip(OBJECT_SIZE * h * reference / depth[v, u], 0.12 * h, 0.5 * h))
            half = side / 2
            bottom = min(h, int(round(v + 0.15 * side)))
            box = (int(round(u - half)), int(round(bottom - side)), int(round(u + half)), bottom)
            if box[0] < 0 or box[1] < 0 or box[2] > w:
                continue
            base = (box[0], max(box[1], bottom - max(2, int(0.2 * side))), box[2], bottom)
            supported = _box_overlap(support, base)
            overlap = _box_overlap(occupied, box)
            depth_pos = (v - top_row) / max(1.0, h - 1 - top_row)
            cost = (OVERLAP_WEIGHT * overlap + 2.0 * (1 - supported) + abs(u / (w - 1) - across)
                    + 0.5 * abs(depth_pos - distance))
            if cost < best_cost:
                best, best_cost = Placement(box, (int(u), int(v)), plane, overlap), cost
    return best
