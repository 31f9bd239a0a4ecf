"""angle_change reprojection geometry, numerically (no models)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retouch.pipelines.angle import camera_move, depth_from_relative, reproject
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


@pytest.mark.parametrize("angle, hole_side", [("eye level, right side", "right"),
                                               ("eye level, front-right", "right"),
                                               ("eye level, left side", "left"),
                                               ("eye level, front-left", "left")])
def test_yaw_opens_holes_beside_the_near_object(angle, hole_side):
    image, depth = _scene()
    view = reproject(image, depth, angle)
    columns = _square_columns(view)
    rows = slice(26, 38)  # inside the square's vertical extent
    holes = view.hole_mask[rows]
    right_of = holes[:, columns.max() + 1: columns.max() + 4].mean()
    left_of = holes[:, max(columns.min() - 3, 0): columns.min()].mean()
    opened, other = (right_of, left_of) if hole_side == "right" else (left_of, right_of)
    assert opened > 0.9 and other < opened - 0.5
    # The far wall slides the other way: the opposite image border opens up too.
    border = view.hole_mask[:, :2] if hole_side == "right" else view.hole_mask[:, -2:]
    assert border.mean() > 0.9


def test_pitch_moves_holes_vertically():
    image, depth = _scene()
    above = reproject(image, depth, "bird's eye view, front").hole_mask
    below = reproject(image, depth, "worm's eye view, front").hole_mask
    # Camera up → background revealed above the square and at the bottom border; and vice versa.
    assert above[16:20, 26:38].mean() > 0.9 and above[-2:].mean() > 0.9
    assert below[44:48, 26:38].mean() > 0.9 and below[:2].mean() > 0.9


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
    assert abs(move.yaw) <= 30 and abs(move.pitch) <= 20 and move.regenerate_subject


def test_depth_from_relative_maps_nearer_to_smaller_depth():
    relative = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    depth = depth_from_relative(relative)
    assert depth[0, 0] == pytest.approx(4.0) and depth[1, 1] == pytest.approx(1.0)
    assert depth[0, 1] > depth[1, 0]
