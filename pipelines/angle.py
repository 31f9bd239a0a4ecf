"""angle_change: re-photograph the main image from one of the 40 dashboard cube angles.

Stages: depth estimate → reprojection to the requested camera (this module's pure geometry) →
depth-ControlNet inpainting of what the original view could not see.

Geometry (`reproject`): the image is unprojected to a point cloud with a pinhole camera
(horizontal field of view `FOV_DEGREES`), the camera orbits around a pivot on the optical axis at
the subject's depth (median depth of the central region), and the points are forward-warped into
the new view with a z-buffer (nearest point wins). Pixels that no point lands on are the *hole
mask*; cracks where a surface is stretched (at most two pixels across) are closed from their
neighbours.

Requested angles: the side sets the yaw (front 0°, front-right 45°, right side 90°, rear-right
135°, rear 180°, rear-left -135°, left side -90°, front-left -45°; positive = the camera moves to
the viewer's right) and the height sets the pitch (bird's eye view -60°, high angle -30°, eye level
0°, low angle +25°, worm's eye view +50°; negative = the camera rises and looks down).

The camera moves by the full requested angle up to a cap of ±`MAX_GEOMETRIC_YAW` (60°) yaw and
±`MAX_GEOMETRIC_PITCH` (60°) pitch, so every height (-60°..+50°) and the front and three-quarter
sides (±45°) are reprojected exactly; only the profile sides (±90° → 60°) and the rear-left/right
(±135° → ±60°) are capped. Why 60°: a single photo holds one side of each surface; a surface
facing the source camera is foreshortened by cos(yaw) in the new view, so at 90° the subject is
seen edge-on and reprojection leaves nothing of it, while at 60° it still keeps half its width
(the rest of the rotation is carried by the camera prompt). Rear views cannot be reprojected from
a front photo at all: the straight rear view keeps the source camera (yaw 0) and, for the three
rear sides, the subject (the nearer half of the depth range) is added to the hole mask, so the
inpaint step redraws it from behind within the depth silhouette while the background stays
reprojected.

What the new view reveals (the hole mask, dilated by `HOLE_DILATION`) is inpainted with the
depth ControlNet, the prompt being the camera phrase plus the client's `text_prompt`. When there
is nothing to reveal (eye level, front) and `text_prompt` is set, a refine pass (the same
pipeline over the whole frame at `REFINE_STRENGTH`) applies it; only eye level, front without a
`text_prompt` returns the fitted source unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from . import prompts
from .common import RunContext, depth_control_image, pipe_working_size, run_diffusion, \
    steps_for_strength
from .errors import PipelineInputError
from .prompts import split_angle
from .sizes import fit_to_size, output_size, resize_mask_to, resize_to
from .vocabulary import ANGLES

FOV_DEGREES = 60.0
MAX_GEOMETRIC_YAW = 60.0
MAX_GEOMETRIC_PITCH = 60.0

SIDE_YAW = {"front": 0.0, "front-right": 45.0, "right side": 90.0, "rear-right": 135.0,
            "rear": 180.0, "rear-left": -135.0, "left side": -90.0, "front-left": -45.0}
HEIGHT_PITCH = {"bird's eye view": -60.0, "high angle": -30.0, "eye level": 0.0,
                "low angle": 25.0, "worm's eye view": 50.0}
REAR_SIDES = ("rear-right", "rear", "rear-left")

# Relative depth estimates are mapped into this range (scene units) before unprojection.
NEAR_DEPTH, FAR_DEPTH = 1.0, 4.0


@dataclass(frozen=True)
class CameraMove:
    requested_yaw: float
    requested_pitch: float
    yaw: float  # degrees actually applied to the geometry
    pitch: float
    regenerate_subject: bool  # rear views: the subject is redrawn, not reprojected


@dataclass
class ReprojectedView:
    image: Image.Image  # RGB, holes filled with the mean colour (the inpaint step replaces them)
    depth: np.ndarray  # float32 HxW scene depth in the new view, holes filled with the far depth
    hole_mask: np.ndarray  # bool HxW, True where the new view has no source pixel


def camera_move(angle: str) -> CameraMove:
    height, side = split_angle(angle)
    yaw, pitch = SIDE_YAW[side], HEIGHT_PITCH[height]
    geometric_yaw = 0.0 if side == "rear" else float(np.clip(
        yaw, -MAX_GEOMETRIC_YAW, MAX_GEOMETRIC_YAW))
    geometric_pitch = float(np.clip(pitch, -MAX_GEOMETRIC_PITCH, MAX_GEOMETRIC_PITCH))
    return CameraMove(yaw, pitch, geometric_yaw, geometric_pitch, side in REAR_SIDES)


def depth_from_relative(relative: np.ndarray) -> np.ndarray:
    """Relative inverse depth (larger = nearer, any scale) → depth in [NEAR_DEPTH, FAR_DEPTH]."""
    rel = relative.astype(np.float64)
    lo, hi = float(rel.min()), float(rel.max())
    normalised = (rel - lo) / (hi - lo) if hi > lo else np.zeros_like(rel)
    inverse = 1.0 / FAR_DEPTH + normalised * (1.0 / NEAR_DEPTH - 1.0 / FAR_DEPTH)
    return (1.0 / inverse).astype(np.float32)


def focal_length(width: int) -> float:
    return 0.5 * width / math.tan(math.radians(FOV_DEGREES) / 2)


def orbit_rotation(yaw_degrees: float, pitch_degrees: float) -> np.ndarray:
    """Rotation of the new camera (camera axes: x right, y down, z forward)."""
    yaw, pitch = math.radians(yaw_degrees), math.radians(pitch_degrees)
    # Orbit right (positive yaw): the camera swings to +x and turns left to face the pivot.
    rot_y = np.array([[math.cos(yaw), 0.0, -math.sin(yaw)],
                      [0.0, 1.0, 0.0],
                      [math.sin(yaw), 0.0, math.cos(yaw)]])
    # Negative pitch: the camera rises (-y) and tilts down toward the pivot.
    rot_x = np.array([[1.0, 0.0, 0.0],
                      [0.0, math.cos(pitch), -math.sin(pitch)],
                      [0.0, math.sin(pitch), math.cos(pitch)]])
    return rot_y @ rot_x


def subject_pivot_depth(depth: np.ndarray) -> float:
    h, w = depth.shape
    centre = depth[h // 4: h - h // 4 or h, w // 4: w - w // 4 or w]
    # The subject usually fills the centre; a low percentile keeps the pivot on it, not behind it.
    return float(np.percentile(centre, 30))


def reproject(image: Image.Image, depth: np.ndarray, angle: str) -> ReprojectedView:
    """Forward-warp `image` (with scene `depth`, same HxW) to the camera for `angle`."""
    move = camera_move(angle)
    rgb = np.asarray(image.convert("RGB"))
    h, w = depth.shape
    if rgb.shape[:2] != (h, w):
        raise ValueError(f"depth {depth.shape} does not match image {rgb.shape[:2]}")
    f = focal_length(w)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = depth.astype(np.float64)
    points = np.stack([(u - cx) * z / f, (v - cy) * z / f, z], axis=-1).reshape(-1, 3)

    # Camera orbit around the pivot P: a world point X is seen at R^T (X - P) + P.
    pivot = np.array([0.0, 0.0, subject_pivot_depth(depth)])
    rotation = orbit_rotation(move.yaw, move.pitch)
    moved = (points - pivot) @ rotation + pivot  # row-vector form of R^T (X - P)
    new_z = moved[:, 2]
    in_front = new_z > 1e-6
    safe_z = np.where(in_front, new_z, 1.0)
    new_u = np.rint(moved[:, 0] * f / safe_z + cx).astype(np.int64)
    new_v = np.rint(moved[:, 1] * f / safe_z + cy).astype(np.int64)
    valid = in_front & (new_u >= 0) & (new_u < w) & (new_v >= 0) & (new_v < h)

    # Z-buffer: sort by depth (near first); the first point per target pixel wins.
    source_index = np.flatnonzero(valid)
    order = np.argsort(new_z[source_index], kind="stable")
    source_index = source_index[order]
    target = new_v[source_index] * w + new_u[source_index]
    target, first = np.unique(target, return_index=True)
    source_index = source_index[first]

    flat_rgb = rgb.reshape(-1, 3)
    out_rgb = np.zeros((h * w, 3), dtype=np.float64)
    out_depth = np.zeros(h * w, dtype=np.float64)
    filled = np.zeros(h * w, dtype=bool)
    out_rgb[target] = flat_rgb[source_index]
    out_depth[target] = new_z[source_index]
    filled[target] = True
    out_rgb, out_depth, filled = (out_rgb.reshape(h, w, 3), out_depth.reshape(h, w),
                                  filled.reshape(h, w))
    _close_cracks(out_rgb, out_depth, filled)

    holes = ~filled
    if move.regenerate_subject:
        holes |= out_depth_is_subject(out_depth, filled)
    far = float(out_depth[filled].max()) if filled.any() else FAR_DEPTH
    out_depth[holes] = far
    fill_colour = rgb.reshape(-1, 3).mean(axis=0)
    out_rgb[holes] = fill_colour
    warped = Image.fromarray(np.clip(np.rint(out_rgb), 0, 255).astype(np.uint8), "RGB")
    return ReprojectedView(warped, out_depth.astype(np.float32), holes)


def out_depth_is_subject(depth: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """The nearer half of the visible depth range (the subject) — redrawn for rear views."""
    if not filled.any():
        return np.zeros_like(filled)
    lo, hi = float(depth[filled].min()), float(depth[filled].max())
    return filled & (depth <= lo + 0.5 * (hi - lo))


def _close_cracks(rgb: np.ndarray, depth: np.ndarray, filled: np.ndarray) -> None:
    """Fill the cracks a forward warp leaves where a surface is stretched (in place).

    A crack is a hole that a 3x3 morphological closing of the filled mask removes (at most two
    pixels across); real disocclusions are wider and stay holes. Cracks take the mean of their
    filled 8-neighbours, from the outside in.
    """
    image = Image.fromarray(np.where(filled, 255, 0).astype(np.uint8), "L")
    closed = np.asarray(image.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(3)))
    crack = (closed >= 128) & ~filled
    h, w = filled.shape
    for _ in range(3):
        if not crack.any():
            break
        padded = np.pad(filled, 1)
        rgb_p = np.pad(rgb, ((1, 1), (1, 1), (0, 0)))
        depth_p = np.pad(depth, 1)
        count = np.zeros((h, w), dtype=np.int32)
        rgb_sum = np.zeros_like(rgb)
        depth_sum = np.zeros_like(depth)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0:
                    continue
                window = padded[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w]
                count += window
                rgb_sum += rgb_p[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w] * window[..., None]
                depth_sum += depth_p[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w] * window
        now = crack & (count > 0)
        rgb[now] = rgb_sum[now] / count[now][:, None]
        depth[now] = depth_sum[now] / count[now]
        filled |= now
        crack &= ~now


# ---- the model-backed pipeline ---------------------------------------------------------------
MAIN = "input.main_image"
HOLE_DILATION = 3  # px at the working size, so the inpaint blends the seams
ANGLE_CONTROL_SCALE = 0.7
HOLE_STRENGTH = 0.99
REFINE_STRENGTH = 0.45  # eye level, front with a text_prompt: keep the photo, apply the request


def check_inputs(request, images: dict[str, Image.Image]) -> None:
    if images.get(MAIN) is None:
        raise PipelineInputError(MAIN, "is required")
    if request.input.angle not in ANGLES:
        raise PipelineInputError("input.angle",
                                 f"{request.input.angle!r} is not a dashboard cube angle")


@dataclass
class AngleJob:
    """What one angle change decided: the warped view and the mask the inpaint fills."""
    view: ReprojectedView
    mask: Image.Image | None  # "L" at the working size; None: nothing to draw (source returned)
    strength: float
    prompt: str


def plan_angle(init: Image.Image, depth: np.ndarray, angle: str,
               text_prompt: str) -> AngleJob:
    """Reproject `init` and decide what the diffusion pass repaints (pure, no model)."""
    view = reproject(init, depth, angle)
    prompt = prompts.angle_prompt(angle, text_prompt)
    if view.hole_mask.any():
        hole = Image.fromarray(np.where(view.hole_mask, 255, 0).astype(np.uint8), "L")
        return AngleJob(view, hole.filter(ImageFilter.MaxFilter(HOLE_DILATION)), HOLE_STRENGTH,
                        prompt)
    if text_prompt.strip():  # nothing revealed, but the client asked for something: refine
        return AngleJob(view, Image.new("L", init.size, 255), REFINE_STRENGTH, prompt)
    return AngleJob(view, None, 0.0, prompt)


def render_angle(store, source: Image.Image, size: tuple[int, int], angle: str,
                 text_prompt: str, quality: str, progress, ctx: RunContext,
                 seed_offset: int = 0) -> Image.Image:
    """`source` re-photographed from `angle` at the output `size` (also used by the carousel)."""
    pipe = store.controlnet_inpaint("depth")
    work = pipe_working_size(store, pipe, size)
    init = fit_to_size(source, work)
    depth = depth_from_relative(store.depth_estimator()(init))
    job = plan_angle(init, depth, angle, text_prompt)
    progress.report(0.15)
    ctx.check_cancelled()
    if job.mask is None:
        progress.report(1.0)
        return fit_to_size(source, size)
    steps = steps_for_strength(store.quality_steps[quality], job.strength)
    result = run_diffusion(
        pipe, progress.stage(0.15, 1.0), ctx, seed_offset=seed_offset, prompt=job.prompt,
        negative_prompt=prompts.NEGATIVE_PROMPT, image=job.view.image,
        mask_image=resize_mask_to(job.mask, work), control_image=depth_control_image(
            1.0 / job.view.depth), width=work[0], height=work[1],
        controlnet_conditioning_scale=ANGLE_CONTROL_SCALE, strength=job.strength,
        num_inference_steps=steps)
    return resize_to(result, size)


def angle_change(store, request, images: dict[str, Image.Image],
                 ctx: RunContext) -> list[Image.Image]:
    """Depth → reprojection → depth-ControlNet inpaint of the holes (refine when there are none)."""
    check_inputs(request, images)
    ctx.report(0.0)
    source = images[MAIN].convert("RGB")
    size = output_size(request.options.aspect_ratio, native_size=store.native_size,
                       source_size=source.size)
    return [render_angle(store, source, size, request.input.angle, request.input.text_prompt,
                         request.options.quality, ctx.stage(0.0, 1.0), ctx)]
