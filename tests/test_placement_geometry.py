"""Placement decisions on synthetic depth maps: ground plane, foot point, scale, free area."""

from __future__ import annotations

import numpy as np
import pytest

from retouch.pipelines.angle import focal_length
from retouch.pipelines.ground import (PERSON_TO_CAMERA_HEIGHT, choose_object_box,
                                      choose_person_box, fit_ground_plane, floor_point,
                                      occupied_mask, person_height_px, unproject)

H, W = 96, 128
CAMERA = 1.5
WALL = 40.0


def floor_scene(tilt=-0.12, obstacle=None):
    """A floor CAMERA below the camera, normal (0, −cos t, sin t): horizon at cy + f·tan t;
    a far wall above the horizon. `obstacle` = (left, right, base_row, height_rows): a
    fronto-parallel board standing on the floor (its depth = the floor's at its base)."""
    f, cx, cy = focal_length(W), (W - 1) / 2, (H - 1) / 2
    v, u = np.mgrid[0:H, 0:W].astype(float)
    normal = np.array([0.0, -np.cos(tilt), np.sin(tilt)])
    along = normal[1] * (v - cy) / f + normal[2]
    depth = np.where(along < -1e-9, -CAMERA / np.minimum(along, -1e-9), WALL)
    depth = np.minimum(depth, WALL)
    occupied = np.zeros((H, W), bool)
    if obstacle:
        left, right, base, rows = obstacle
        board = depth[base, left]
        region = (slice(base - rows, base + 1), slice(left, right))
        depth[region] = np.minimum(depth[region], board)
        occupied[region] = True
    return depth.astype(np.float32), cy + f * np.tan(tilt), occupied


@pytest.mark.parametrize("tilt", [0.0, -0.12, 0.1])
def test_ground_plane_recovers_the_horizon_and_camera_height(tilt):
    depth, horizon, _ = floor_scene(tilt)
    plane = fit_ground_plane(depth)
    assert plane.fitted
    assert abs(plane.horizon_row - horizon) < 1.0
    assert plane.camera_height == pytest.approx(CAMERA, rel=0.05)
    rows = np.arange(H)
    assert plane.floor[rows > horizon + 2].mean() > 0.95 and not plane.floor[rows < horizon].any()


def test_flat_wall_has_no_floor_and_a_nominal_one_stands_in():
    plane = fit_ground_plane(np.full((H, W), 3.0, np.float32))
    assert not plane.fitted and plane.horizon_row == pytest.approx(0.4 * H)
    assert choose_person_box(plane, "", 0.4) is not None


def test_person_stands_on_the_floor_and_shrinks_with_distance():
    depth, horizon, _ = floor_scene()
    plane = fit_ground_plane(depth)
    near = choose_person_box(plane, "near the camera", 0.4)
    far = choose_person_box(plane, "far away", 0.4)
    for placement in (near, far):
        u, v = placement.foot
        assert plane.floor[v, u] and placement.box[3] == v + 1
        # The foot point is the floor point under the pixel: on the plane, at the map's depth.
        point = floor_point(plane, (u, v))
        assert point[2] == pytest.approx(depth[v, u], rel=0.02)
        assert unproject(depth)[v, u] == pytest.approx(point, rel=0.02, abs=0.02)
    assert near.foot[1] > far.foot[1]
    near_h, far_h = (p.box[3] - p.box[1] for p in (near, far))
    assert near_h > 1.5 * far_h
    # Geometric scale: height ∝ 1/depth (the person's height over the camera's, same ratio).
    for placement in (near, far):
        u, v = placement.foot
        z = depth[v, u]
        expected = PERSON_TO_CAMERA_HEIGHT * CAMERA * focal_length(W) / z
        assert person_height_px(plane, (u, v)) == pytest.approx(expected, rel=0.1)


def test_words_move_the_person_across():
    depth, _, _ = floor_scene()
    plane = fit_ground_plane(depth)
    left = choose_person_box(plane, "on the left", 0.4)
    right = choose_person_box(plane, "standing right", 0.4)
    centre = choose_person_box(plane, "", 0.4)
    assert left.foot[0] < W * 0.35 and right.foot[0] > W * 0.65
    assert abs(centre.foot[0] - W / 2) < W * 0.1


def test_person_box_avoids_an_occupied_area():
    obstacle = (44, 84, 80, 40)  # a board in the middle of the floor, right where "centre" is
    depth, _, occupied = floor_scene(obstacle=obstacle)
    plane = fit_ground_plane(depth)
    assert occupied_mask(plane)[occupied].mean() > 0.9
    placed = choose_person_box(plane, "in the centre", 0.4)
    left, top, right, bottom = placed.box
    # Either clear of the board, or standing in front of it (the person then hides the board).
    in_front = placed.foot[1] > obstacle[2] + 2
    assert in_front or occupied[top:bottom, left:right].mean() < 0.05
    assert placed.overlap < 0.05
    behind = choose_person_box(plane, "in the centre, far", 0.4)
    if behind.foot[1] < obstacle[2]:  # behind the board's base: never hidden by it
        b = behind.box
        assert occupied[b[1]:b[3], b[0]:b[2]].mean() < 0.05
    free = fit_ground_plane(floor_scene()[0])
    unobstructed = choose_person_box(free, "in the centre", 0.4).box
    assert occupied[unobstructed[1]:unobstructed[3], unobstructed[0]:unobstructed[2]].mean() > 0.2


def test_object_box_stands_on_free_surface():
    obstacle = (10, 50, 88, 30)
    depth, horizon, occupied = floor_scene(obstacle=obstacle)
    placed = choose_object_box(depth, "a vase on the left")
    left, top, right, bottom = placed.box
    assert top > horizon - 5  # on the floor, not on the wall
    assert occupied[top:bottom, left:right].mean() < 0.05  # not inside the board
    u, v = placed.foot
    assert fit_ground_plane(depth).floor[v, u]
    assert (left + right) / 2 < W / 2  # still on the asked side
    far = choose_object_box(depth, "a lamp far away")
    near = choose_object_box(depth, "a lamp near the camera")
    assert (far.box[3] - far.box[1]) < (near.box[3] - near.box[1])  # smaller with distance
