"""angle_change reprojection geometry, numerically (no models)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retouch.pipelines.angle import (MAX_GEOMETRIC_YAW, camera_move, depth_from_relative,
                                     focal_length, plan_angle, reproject)
from retouch.pipelines.vocabulary import ANGLES

SIZE = 64
SQUARE = slice(20, 44)


def _scene():
    """A textured far wall (depth 4) with a white near square (depth 2) in the middle."""
    v, u = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([u * 3, v * 3, (u + v) % 50], axis=-1).astype(np.uint8)
    depth = np.full((SIZE, SIZE), 4.0, np.float32)
    depth[SQUARE, SQUARE] = 2.0
    rgb[SQUARE, SQUARE] = 255
    return Image.fromarray(rgb, "RGB"), depth


def test_identity_angle_is_exact():
    image, depth = _scene()
    view = reproject(image, depth, "eye level, front")
    assert np.array_equal(np.asarray(view.image), np.asarray(image))
    assert not view.hole_mask.any()
    assert np.allclose(view.depth, depth)


def _square_columns(view):
    white = np.all(np.asarray(view.image) == 255, axis=-1)
    return np.nonzero(white.any(axis=0))[0]


def _hidden_wall_span(theta_degrees):
    """Where the wall strip hidden behind the square (source view) lands in a camera orbiting
    the pivot (the square's depth, 2) by θ, along the rotated axis, from first principles:
    camera at P + Zp(sinθ, −cosθ) in the (x, z) plane, right axis (cosθ, sinθ), forward
    (−sinθ, cosθ)."""
    f, c, zp, zw = focal_length(SIZE), (SIZE - 1) / 2, 2.0, 4.0
    half = (SQUARE.stop - 1 - c) * zw / f  # the square's shadow on the wall (source view)
    t = np.radians(theta_degrees)
    camera = np.array([zp * np.sin(t), zp - zp * np.cos(t)])
    right, forward = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
    ends = []
    for x in (-half, half):
        ray = np.array([x, zw]) - camera
        ends.append(c + f * (ray @ right) / (ray @ forward))
    return sorted(ends)


@pytest.mark.parametrize("angle, theta", [("eye level, right side", 60.0),
                                          ("eye level, front-right", 45.0),
                                          ("eye level, left side", -60.0),
                                          ("eye level, front-left", -45.0)])
def test_yaw_reveals_the_wall_hidden_behind_the_near_object(angle, theta):
    image, depth = _scene()
    view = reproject(image, depth, angle)
    lo, hi = _hidden_wall_span(theta)
    columns = _square_columns(view)
    span = [u for u in range(int(np.ceil(lo)) + 1, int(np.floor(hi)))
            if 0 <= u < SIZE and not columns.min() <= u <= columns.max()]
    assert len(span) >= 3
    # The square's middle rows: the wall that was behind it is a hole (to be inpainted).
    assert view.hole_mask[28:36][:, span].mean() > 0.9
    # On the side the camera moved to; the far wall slides the other way, opening that border.
    if theta > 0:
        assert min(span) > columns.max() and view.hole_mask[:, :2].mean() > 0.9
    else:
        assert max(span) < columns.min() and view.hole_mask[:, -2:].mean() > 0.9
    # Mirror angles give mirror holes (the depth is symmetric about the centre column).
    mirrored = reproject(image, depth, angle.replace("right", "RIGHT").replace("left", "right")
                         .replace("RIGHT", "left"))
    assert (view.hole_mask == mirrored.hole_mask[:, ::-1]).mean() > 0.97


@pytest.mark.parametrize("angle, pitch", [("bird's eye view, front", -60.0),
                                          ("high angle, front", -30.0),
                                          ("worm's eye view, front", 50.0)])
def test_pitch_reveals_the_wall_above_or_below(angle, pitch):
    image, depth = _scene()
    view = reproject(image, depth, angle)
    # Pitch is the same orbit about the x axis: camera up (negative) reveals above the square.
    lo, hi = _hidden_wall_span(pitch)
    white = np.all(np.asarray(view.image) == 255, axis=-1)
    rows_of_square = np.nonzero(white.any(axis=1))[0]
    span = [v for v in range(int(np.ceil(lo)) + 1, int(np.floor(hi)))
            if 0 <= v < SIZE and not rows_of_square.min() <= v <= rows_of_square.max()]
    assert len(span) >= 2
    assert view.hole_mask[span][:, 28:36].mean() > 0.9
    if pitch < 0:
        assert max(span) < rows_of_square.min() and view.hole_mask[-2:].mean() > 0.9
    else:
        assert min(span) > rows_of_square.max() and view.hole_mask[:2].mean() > 0.9


def test_every_angle_reprojects_and_rear_views_redraw_the_subject():
    image, depth = _scene()
    for angle in ANGLES:
        view = reproject(image, depth, angle)
        assert view.image.size == image.size and view.hole_mask.shape == depth.shape
        assert view.depth.min() > 0
        if angle.endswith(("rear", "rear-left", "rear-right")):
            assert view.hole_mask[28:36, 28:36].all()
    move = camera_move("worm's eye view, rear-left")
    assert move.requested_yaw == -135 and move.requested_pitch == 50
    assert move.yaw == -60 and move.pitch == 50 and move.regenerate_subject
    # The full requested angle within the cap; the cap only for profiles and rear sides.
    assert camera_move("high angle, front-right").yaw == 45
    assert camera_move("bird's eye view, front").pitch == -60
    assert camera_move("eye level, right side").yaw == MAX_GEOMETRIC_YAW == 60
    assert camera_move("eye level, rear").yaw == 0


def test_depth_from_relative_maps_nearer_to_smaller_depth():
    relative = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    depth = depth_from_relative(relative)
    assert depth[0, 0] == pytest.approx(4.0) and depth[1, 1] == pytest.approx(1.0)
    assert depth[0, 1] > depth[1, 0]


def _coded_plane(size=96, depth=3.0):
    """A fronto-parallel plane at `depth` (the pivot); red = source column, green = source row."""
    v, u = np.mgrid[0:size, 0:size]
    rgb = np.stack([u, v, np.zeros_like(u)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB"), np.full((size, size), depth, np.float32)


@pytest.mark.parametrize("angle, theta", [("eye level, front-right", 45.0),
                                          ("eye level, front-left", -45.0),
                                          ("eye level, right side", 60.0)])
def test_yaw_moves_a_plane_by_the_geometric_amount(angle, theta):
    """A plane point at lateral offset x (depth Z = the pivot) seen by a camera orbiting the
    pivot by θ: lateral x·cosθ, depth Z − x·sinθ (camera placed at P + Z(sinθ, 0, −cosθ))."""
    size, z = 96, 3.0
    f, c = focal_length(size), (size - 1) / 2
    image, depth = _coded_plane(size, z)
    view = reproject(image, depth, angle)
    row = size // 2
    filled = ~view.hole_mask[row]
    source_u = np.asarray(view.image)[row, filled, 0].astype(float)
    x, t = (source_u - c) * z / f, np.radians(theta)
    expected = c + f * x * np.cos(t) / (z - x * np.sin(t))
    assert filled.sum() > size // 3
    assert np.abs(np.nonzero(filled)[0] - expected).max() <= 1.5  # crack fills interpolate
    # The full rotation, not the old third of it: the plane's edge moved by many pixels.
    third = c + f * x * np.cos(t / 3) / (z - x * np.sin(t / 3))
    assert np.abs(np.nonzero(filled)[0] - third).max() > 5.0
    assert view.hole_mask.any()  # the turned plane no longer covers the frame


def test_pitch_moves_a_plane_by_the_geometric_amount():
    size, z = 96, 3.0
    f, c = focal_length(size), (size - 1) / 2
    image, depth = _coded_plane(size, z)
    view = reproject(image, depth, "high angle, front")  # pitch -30°
    column = size // 2
    filled = ~view.hole_mask[:, column]
    source_v = np.asarray(view.image)[filled, column, 1].astype(float)
    y, t = (source_v - c) * z / f, np.radians(-30.0)
    expected = c + f * y * np.cos(t) / (z - y * np.sin(t))
    assert np.abs(np.nonzero(filled)[0] - expected).max() <= 1.5  # crack fills interpolate


def test_revealed_pixels_are_masked_for_the_inpaint_and_front_needs_a_prompt():
    image, depth = _scene()
    job = plan_angle(image, depth, "low angle, front-left", "")
    hole = np.asarray(job.mask) >= 128
    assert job.view.hole_mask.any() and hole[job.view.hole_mask].all() and job.strength > 0.9
    assert "from a low angle" in job.prompt or "low" in job.prompt
    assert plan_angle(image, depth, "eye level, front", "").mask is None
    refine = plan_angle(image, depth, "eye level, front", "a red hat")
    assert (np.asarray(refine.mask) == 255).all() and 0 < refine.strength < 1
    assert "a red hat" in refine.prompt


# ---- the model-backed pipeline (tiny twins, CPU) ------------------------------------------------
def _request(angle, text_prompt=""):
    from retouch.serving.tasks import parse_request

    return parse_request({"tool": "photographer", "options": {"mode": "angle_change",
                                                              "quality": "low"},
                          "input": {"main_image": "https://example.com/a.png", "angle": angle,
                                    "text_prompt": text_prompt}})


def _photo():
    v, u = np.mgrid[0:80, 0:96]
    rgb = np.stack([u * 2, v * 3, (u + v) % 64 * 3], axis=-1)
    rgb[20:50, 30:66] = (230, 200, 60)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def test_angle_change_inpaints_what_the_new_view_reveals(tiny_store, monkeypatch):
    from retouch.pipelines import angle as angle_module
    from retouch.pipelines.common import RunContext

    calls = []
    real = angle_module.run_diffusion

    def spy(pipe, progress, ctx, **kwargs):
        calls.append(kwargs)
        return real(pipe, progress, ctx, **kwargs)

    monkeypatch.setattr(angle_module, "run_diffusion", spy)
    photo = _photo()
    (out,) = angle_module.angle_change(tiny_store, _request("low angle, front-left"),
                                       {"input.main_image": photo}, RunContext(seed=1))
    (call,) = calls
    hole = np.asarray(call["mask_image"]) >= 128
    assert 0.05 < hole.mean() < 0.95 and call["strength"] > 0.9
    warped = np.asarray(call["image"]).astype(int)
    result = np.asarray(out.resize(call["image"].size)).astype(int)
    # What was revealed was drawn (not the flat hole colour left by the warp).
    assert np.abs(result[hole] - warped[hole]).mean() > 5
    assert out.size == photo.size


def test_text_prompt_conditions_eye_level_front(tiny_store):
    from retouch.pipelines.angle import angle_change
    from retouch.pipelines.common import RunContext

    photo = _photo()

    def run(text):
        return np.asarray(angle_change(tiny_store, _request("eye level, front", text),
                                       {"input.main_image": photo}, RunContext(seed=1))[0])

    plain, hat, scarf = run(""), run("add a red hat"), run("a blue scarf, film grain")
    assert np.array_equal(plain, np.asarray(photo))  # nothing asked, nothing to reveal
    assert not np.array_equal(hat, plain) and not np.array_equal(hat, scarf)
