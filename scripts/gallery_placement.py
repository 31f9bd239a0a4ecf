"""Gallery of what the scene-aware modes decide, on a test photo: `python -m retouch.scripts.gallery_placement`.

Writes into `docs/gallery/` (or `--out`):
- `placement.png`: the fitted ground plane (horizon line, floor in green, things standing on it
  in red) and the person boxes chosen for a few `text_prompt`s, plus the object box.
- `angle.png`: the depth reprojection for a few angles, the revealed pixels (what the inpaint
  fills) in magenta.
- `carousel.png`, `carousel-shots.json`, `carousel-shots.md`: the carousel's shot list and its
  10 frames rendered by the tiny twins (their pixels are noise; the shot list, the dispatch and
  the framing crops are what the picture shows).

The test photo is a rendered room (floor, wall, a board standing on the floor) with its exact
depth: the tiny profile's depth estimator has random weights, so its depth says nothing about a
scene. The decisions are the production code's (`pipelines.ground`, `pipelines.angle`,
`pipelines.carousel`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from retouch.pipelines import ground
from retouch.pipelines.angle import focal_length, plan_angle

SIZE = (256, 192)
CAMERA_HEIGHT, TILT, WALL_Z = 1.5, -0.1, 9.0
BOARD = (0.9, 2.1, 4.0, 1.0)  # x from, x to, depth, height (scene units)


def test_scene(size=SIZE) -> tuple[Image.Image, np.ndarray]:
    """A rendered room seen by the pipelines' pinhole camera: (photo, exact depth)."""
    w, h = size
    f, cx, cy = focal_length(w), (w - 1) / 2, (h - 1) / 2
    v, u = np.mgrid[0:h, 0:w].astype(float)
    rx, ry = (u - cx) / f, (v - cy) / f
    # Camera tilted down by TILT: the floor normal in camera axes.
    normal = np.array([0.0, -np.cos(TILT), np.sin(TILT)])
    along = normal[1] * ry + normal[2]
    floor_z = np.where(along < -1e-9, CAMERA_HEIGHT / np.maximum(-along, 1e-9), np.inf)
    depth = np.minimum(floor_z, WALL_Z)
    rgb = np.zeros((h, w, 3), float)
    on_floor = floor_z < WALL_Z
    # Floor: a checkerboard in floor coordinates; wall: warm paint with vertical panels.
    fx, fz = rx * floor_z, floor_z
    checker = ((np.floor(fx * 1.5) + np.floor(fz * 1.5)) % 2)[..., None]
    floor_colour = np.where(checker > 0, [150, 120, 90], [200, 175, 140])
    panels = (np.floor(rx * WALL_Z * 1.2) % 2)[..., None]
    wall_colour = np.where(panels > 0, [215, 205, 190], [200, 190, 175]) - \
        (v[..., None] / h) * 30
    rgb = np.where(on_floor[..., None], floor_colour, wall_colour)
    # The board: fronto-parallel at depth BOARD[2], standing on the floor.
    x0, x1, bz, bh = BOARD
    x, y = rx * bz, ry * bz
    floor_y = -(CAMERA_HEIGHT + normal[2] * bz) / normal[1]
    board = (x >= x0) & (x <= x1) & (y <= floor_y) & (y >= floor_y - bh) & (bz < depth)
    rgb[board] = [90, 60, 40]
    depth[board] = bz
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"), depth.astype(np.float32)


def _label(draw: ImageDraw.ImageDraw, xy, text: str, fill) -> None:
    draw.rectangle((xy[0], xy[1], xy[0] + 6 * len(text) + 4, xy[1] + 11), fill=(0, 0, 0))
    draw.text((xy[0] + 2, xy[1]), text, fill=fill)


def placement_section(out: Path) -> Path:
    photo, depth = test_scene()
    plane = ground.fit_ground_plane(depth)
    rgb = np.asarray(photo).astype(float)
    rgb[plane.floor] = rgb[plane.floor] * 0.6 + np.array([0, 200, 0]) * 0.4
    occupied = ground.occupied_mask(plane)
    rgb[occupied] = rgb[occupied] * 0.5 + np.array([230, 0, 0]) * 0.5
    canvas = Image.fromarray(rgb.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    draw.line((0, plane.horizon_row, canvas.width, plane.horizon_row), fill=(255, 255, 0))
    _label(draw, (2, max(0, plane.horizon_row - 12)), "horizon", (255, 255, 0))
    colours = [(255, 255, 255), (0, 200, 255), (255, 140, 0)]
    for text, colour in zip(("", "on the left, near", "far right"), colours):
        placed = ground.choose_person_box(plane, text, 0.4)
        draw.rectangle(placed.box, outline=colour, width=2)
        draw.ellipse((placed.foot[0] - 2, placed.foot[1] - 2, placed.foot[0] + 2,
                      placed.foot[1] + 2), fill=colour)
        _label(draw, (placed.box[0], placed.box[1] - 12), f"person: '{text}'", colour)
    obj = ground.choose_object_box(depth, "a vase on the right")
    draw.rectangle(obj.box, outline=(255, 0, 255), width=2)
    _label(draw, (obj.box[0], obj.box[3] + 1), "object: 'a vase on the right'", (255, 0, 255))
    path = out / "placement.png"
    _save(canvas.resize((canvas.width * 2, canvas.height * 2), Image.Resampling.NEAREST), path)
    return path


ANGLES_SHOWN = ("eye level, front-right", "high angle, front", "low angle, front-left",
                "eye level, right side")


def angle_section(out: Path) -> Path:
    photo, depth = test_scene()
    tiles = [photo.copy()]
    _label(ImageDraw.Draw(tiles[0]), (2, 2), "source", (255, 255, 255))
    for angle in ANGLES_SHOWN:
        job = plan_angle(photo, depth, angle, "")
        rgb = np.asarray(job.view.image).copy()
        rgb[job.view.hole_mask] = (255, 0, 255)
        tile = Image.fromarray(rgb, "RGB")
        share = job.view.hole_mask.mean()
        _label(ImageDraw.Draw(tile), (2, 2), f"{angle}: {share:.0%} revealed", (255, 255, 255))
        tiles.append(tile)
    w, h = photo.size
    sheet = Image.new("RGB", (w * 3, h * 2), (30, 30, 30))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % 3) * w, (i // 3) * h))
    path = out / "angle.png"
    _save(sheet, path)
    return path


def carousel_section(out: Path, cache_dir: Path) -> Path:
    from retouch.models.store import ModelStore
    from retouch.models.tiny import build_tiny_models
    from retouch.pipelines import carousel
    from retouch.pipelines.common import RunContext
    from retouch.serving.tasks import parse_request

    build_tiny_models(cache_dir)
    store = ModelStore(profile="tiny", device="cpu", cache_dir=cache_dir)
    photo, _ = test_scene((128, 96))
    request = parse_request({"tool": "photographer", "input": {
        "main_image": "https://example.com/room.png", "text_prompt": "interior design set"},
        "options": {"mode": "carousel", "quality": "low"}})
    plan = carousel.plan_carousel(store, photo, request.input.text_prompt)
    frames = carousel.carousel(store, request, {"input.main_image": photo}, RunContext(seed=1))
    shots = [{"frame": i + 1, "pipeline": shot.pipeline, "source": origin,
              **shot.model_dump()} for i, (shot, origin) in enumerate(zip(plan.shots,
                                                                           plan.sources))]
    (out / "carousel-shots.json").write_text(json.dumps(
        {"description": plan.description, "planner_rejections": list(plan.attempts),
         "shots": shots}, indent=2) + "\n")
    lines = ["| # | pipeline | framing | angle | time | season | weather | prompt | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s['frame']} | {s['pipeline']} | {s['framing']} | {s['angle']} | "
              f"{s['time'] or ''} | {s['season'] or ''} | {s['weather'] or ''} | {s['prompt']} | "
              f"{s['source']} |" for s in shots]
    (out / "carousel-shots.md").write_text("\n".join(lines) + "\n")
    w, h = frames[0].size
    sheet = Image.new("RGB", (w * 5, (h + 12) * 2 + h + 12), (30, 30, 30))
    sheet.paste(photo, (0, 0))
    _label(ImageDraw.Draw(sheet), (w + 4, 2), "source (tiny twins below: noise pixels)",
           (255, 255, 255))
    for i, (frame, shot) in enumerate(zip(frames, plan.shots)):
        x, y = (i % 5) * w, (h + 12) * (1 + i // 5)
        sheet.paste(frame, (x, y + 12))
        _label(ImageDraw.Draw(sheet), (x, y), f"{i + 1} {shot.pipeline} {shot.framing}",
               (255, 255, 255))
    path = out / "carousel.png"
    _save(sheet, path)
    return path


def _save(image: Image.Image, path: Path) -> None:
    image.save(path, optimize=True)
    if path.stat().st_size > 200 * 1024:
        image.quantize(colors=128).save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gallery"))
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".retouch" / "tiny")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in (placement_section(args.out), angle_section(args.out),
                 carousel_section(args.out, args.cache_dir)):
        print(path, f"{path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
