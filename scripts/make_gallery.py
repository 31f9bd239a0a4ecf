"""Gallery of what scene understanding decides on a test photo (docs/gallery/).

    python -m retouch.scripts.make_gallery [--out docs/gallery] [--sections ...]

Writes into `docs/gallery/` (or `--out`; `--sections` picks some):
- `regions.png`: the known label map, then per enhancement region the photo dimmed outside the
  feathered alpha the region pass edits under (`enhance.enhancement_alpha`), with the actions
  that edit it; a region the photo lacks shows its fallback band.
- `matte.png`: a product and a person on flat backdrops, their matte, the cut-out, and the
  cut-out stood in the room (`placement.matted_subject` / `stand_subject`), the harmonised
  region outlined.
- `placement.png`: the fitted ground plane (horizon line, floor in green, things standing on it
  in red) and the person boxes chosen for a few `text_prompt`s, plus the object box.
- `angle.png`: the depth reprojection for a few angles, the revealed pixels (what the inpaint
  fills) in magenta.
- `carousel.png`, `carousel-shots.json`, `carousel-shots.md`: the carousel's shot list and its
  10 frames rendered by the tiny twins (their pixels are noise; the shot list, the dispatch and
  the framing crops are what the picture shows).

The test photo is a rendered room (floor, wall with a window, a cabinet standing on the floor)
drawn together with its exact depth and ADE20K label map. The tiny profile's depth estimator,
scene segmenter and matter have random weights and say nothing about a scene, so the sections
feed the production decision code (`pipelines.enhance`, `scene`, `placement`, `ground`,
`angle`, `carousel`) these known answers: the pictures show what the code decides from a
correct depth / label map / matte, not what a model sees.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw

from retouch.models.registry import ADE20K_LABELS
from retouch.models.store import Segmentation
from retouch.pipelines import ground, placement, scene
from retouch.pipelines.actions import ACTIONS
from retouch.pipelines.angle import focal_length, plan_angle
from retouch.pipelines.enhance import enhancement_alpha

SIZE = (256, 192)
CAMERA_HEIGHT, TILT, WALL_Z = 1.5, -0.1, 9.0
BOARD = (0.9, 2.1, 4.0, 1.0)  # x from, x to, depth, height (scene units)
WINDOW = (-3.4, -0.6, 1.2, 2.6)  # on the wall: x from, x to, height from, height to
MAX_BYTES = 200 * 1024
ADE = {name: i for i, name in enumerate(ADE20K_LABELS)}


@dataclass
class TestRoom:
    photo: Image.Image
    depth: np.ndarray  # float32, scene units
    labels: np.ndarray  # int32 ADE20K ids


def test_room(size=SIZE) -> TestRoom:
    """A rendered room seen by the pipelines' pinhole camera, with its exact depth and labels."""
    w, h = size
    f, cx, cy = focal_length(w), (w - 1) / 2, (h - 1) / 2
    v, u = np.mgrid[0:h, 0:w].astype(float)
    rx, ry = (u - cx) / f, (v - cy) / f
    # Camera tilted down by TILT: the floor normal in camera axes.
    normal = np.array([0.0, -np.cos(TILT), np.sin(TILT)])
    along = normal[1] * ry + normal[2]
    floor_z = np.where(along < -1e-9, CAMERA_HEIGHT / np.maximum(-along, 1e-9), np.inf)
    depth = np.minimum(floor_z, WALL_Z)
    on_floor = floor_z < WALL_Z
    labels = np.where(on_floor, ADE["floor"], ADE["wall"]).astype(np.int32)
    # Floor: a checkerboard in floor coordinates; wall: warm paint with vertical panels.
    fx, fz = rx * floor_z, floor_z
    with np.errstate(invalid="ignore"):  # the wall rows have no floor coordinates
        checker = ((np.floor(fx * 1.5) + np.floor(fz * 1.5)) % 2)[..., None]
    floor_colour = np.where(checker > 0, [150, 120, 90], [200, 175, 140])
    panels = (np.floor(rx * WALL_Z * 1.2) % 2)[..., None]
    wall_colour = np.where(panels > 0, [215, 205, 190], [200, 190, 175]) - \
        (v[..., None] / h) * 30
    rgb = np.where(on_floor[..., None], floor_colour, wall_colour)

    def height_above_floor(z: float) -> tuple[np.ndarray, np.ndarray]:
        floor_y = -(CAMERA_HEIGHT + normal[2] * z) / normal[1]
        return rx * z, floor_y - ry * z

    # The window: a pane of sky on the wall (depth stays the wall's).
    x, above = height_above_floor(WALL_Z)
    x0, x1, y0, y1 = WINDOW
    window = ~on_floor & (x >= x0) & (x <= x1) & (above >= y0) & (above <= y1)
    rgb[window] = np.array([150, 190, 235]) - (above[window, None] - y0) * [-10, 5, 0]
    labels[window] = ADE["windowpane"]
    # The cabinet: fronto-parallel at depth BOARD[2], standing on the floor.
    x0, x1, bz, bh = BOARD
    x, above = height_above_floor(bz)
    board = (x >= x0) & (x <= x1) & (above >= 0) & (above <= bh) & (bz < depth)
    rgb[board] = [90, 60, 40]
    depth[board] = bz
    labels[board] = ADE["cabinet"]
    photo = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return TestRoom(photo, depth.astype(np.float32), labels)


class KnownScene:
    """A stand-in for the model store: answers with the known label map / matte (resized to
    whatever it is asked about), so the production code downstream of the models runs."""

    native_size = 1024  # the production profile's: masks and mattes at its working size

    def __init__(self, labels: np.ndarray | None = None, alpha: np.ndarray | None = None):
        self.labels, self.alpha = labels, alpha

    def scene_segmenter(self):
        def segment(image: Image.Image) -> Segmentation:
            small = Image.fromarray(self.labels.astype(np.uint8), "L").resize(image.size,
                                                                              Image.NEAREST)
            return Segmentation(labels=np.asarray(small, dtype=np.int32), names=ADE20K_LABELS)
        return segment

    def matter(self):
        return lambda image: scene.resize_alpha(self.alpha, image.size)


def _label(draw: ImageDraw.ImageDraw, xy, text: str, fill) -> None:
    draw.rectangle((xy[0], xy[1], xy[0] + 6 * len(text) + 4, xy[1] + 11), fill=(0, 0, 0))
    draw.text((xy[0] + 2, xy[1]), text, fill=fill)


def _sheet(tiles: list[Image.Image], columns: int) -> Image.Image:
    w, h = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (w * columns, h * rows), (30, 30, 30))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * w, (i // columns) * h))
    return sheet


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES // 2:
        image.quantize(colors=128).save(path, optimize=True)
    return path


# ---- enhancement regions ----------------------------------------------------------------------
REGIONS_SHOWN = ("walls", "floor", "windows", "furnishings", "interior", "ceiling")
PALETTE = {"wall": (200, 170, 120), "floor": (120, 80, 50), "windowpane": (90, 150, 230),
           "cabinet": (170, 60, 60)}


def regions_section(out: Path) -> Path:
    room = test_room()
    store = KnownScene(labels=room.labels)
    classes = np.zeros((*room.labels.shape, 3), np.uint8)
    for name, colour in PALETTE.items():
        classes[room.labels == ADE[name]] = colour
    tiles = [Image.fromarray(classes, "RGB")]
    pen = ImageDraw.Draw(tiles[0])
    _label(pen, (2, 2), "known ADE20K label map", (255, 255, 255))
    for i, (name, colour) in enumerate(PALETTE.items()):
        _label(pen, (2, 15 + 12 * i), name, colour)
    photo = np.asarray(room.photo, dtype=np.float32)
    for region in REGIONS_SHOWN:
        alpha = enhancement_alpha(store, room.photo, [region])
        shown = photo * (0.2 + 0.8 * alpha[..., None])
        tile = Image.fromarray(shown.astype(np.uint8), "RGB")
        found = scene.region_mask(store.scene_segmenter()(room.photo), region).mean()
        actions = [a.id for a in ACTIONS if a.region == region]
        pen = ImageDraw.Draw(tile)
        source = "in the label map" if found >= scene.MIN_REGION_FRACTION \
            else "not found: fallback band"
        _label(pen, (2, 2), f"{region} ({source})", (255, 255, 0))
        for i, action in enumerate(actions[:3] + ([f"+{len(actions) - 3} more"]
                                                  if len(actions) > 3 else [])):
            _label(pen, (2, 15 + 12 * i), action, (255, 255, 255))
        tiles.append(tile)
    tiles.append(room.photo.copy())
    _label(ImageDraw.Draw(tiles[-1]), (2, 2), "the test photo", (255, 255, 255))
    return _save(_sheet(tiles, 4), out / "regions.png")


# ---- matte and the cut-out stood in the room --------------------------------------------------
def product_shot(size=(160, 120)) -> tuple[Image.Image, np.ndarray]:
    """A vase (body and neck, anti-aliased) on a grey backdrop, and its true soft alpha."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    body = np.clip(h * 0.28 - np.hypot(xx - w / 2, (yy - h * 0.62) * 1.1) + 0.5, 0, 1)
    neck = np.clip(np.minimum(h * 0.08 - np.abs(xx - w / 2), yy - h * 0.15) + 0.5, 0, 1)
    alpha = np.maximum(body, neck * (yy < h * 0.62)).astype(np.float32)
    colour = np.array([40, 110, 170]) + (yy[..., None] / h) * [30, 40, 40]
    rgb = alpha[..., None] * colour + (1 - alpha[..., None]) * 128
    return Image.fromarray(rgb.astype(np.uint8), "RGB"), alpha


def person_shot(size=(120, 160)) -> tuple[Image.Image, np.ndarray]:
    """A standing figure (head, torso, legs) on a blue-grey backdrop, and its soft alpha."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    head = np.clip(h * 0.07 - np.hypot(xx - w / 2, yy - h * 0.14) + 0.5, 0, 1)
    torso = np.clip(np.minimum(w * 0.16 - np.abs(xx - w / 2),
                               np.minimum(yy - h * 0.22, h * 0.6 - yy)) + 0.5, 0, 1)
    legs = np.clip(np.minimum(w * 0.05 - np.abs(np.abs(xx - w / 2) - w * 0.07),
                              np.minimum(yy - h * 0.58, h * 0.97 - yy)) + 0.5, 0, 1)
    alpha = np.maximum.reduce([head, torso, legs]).astype(np.float32)
    colour = np.where(yy[..., None] < h * 0.2, [225, 180, 150],
                      np.where(yy[..., None] < h * 0.6, [200, 40, 50], [40, 40, 70]))
    rgb = alpha[..., None] * colour + (1 - alpha[..., None]) * np.array([110, 130, 150])
    return Image.fromarray(rgb.astype(np.uint8), "RGB"), alpha


def _checkerboard(image: Image.Image, alpha: np.ndarray) -> Image.Image:
    yy, xx = np.mgrid[0:image.height, 0:image.width]
    board = np.where(((yy // 8 + xx // 8) % 2)[..., None] == 0, 200, 255).astype(np.float32)
    a = alpha[..., None]
    return Image.fromarray((np.asarray(image) * a + board * (1 - a)).astype(np.uint8), "RGB")


def _tile(image: Image.Image, text: str) -> Image.Image:
    tile = Image.new("RGB", SIZE, (30, 30, 30))
    fitted = image.copy()
    fitted.thumbnail(SIZE)
    tile.paste(fitted, ((SIZE[0] - fitted.width) // 2, (SIZE[1] - fitted.height) // 2))
    _label(ImageDraw.Draw(tile), (2, 2), text, (255, 255, 255))
    return tile


def matte_section(out: Path) -> Path:
    room = test_room()
    plane = ground.fit_ground_plane(room.depth)
    boxes = {"product": ground.choose_object_box(room.depth, "a vase on the right").box,
             "person": ground.choose_person_box(plane, "on the left, near", 0.45).box}
    tiles = []
    for name, (reference, known) in (("product", product_shot()), ("person", person_shot())):
        store = KnownScene(alpha=known)
        alpha = scene.subject_alpha(store, reference)  # matted at the working size, as in a job
        subject, cut_alpha = placement.matted_subject(store, reference)
        placed, region = placement.stand_subject(room.photo, subject, cut_alpha, boxes[name])
        outline = np.asarray(placed).copy()
        edge = region & placement.dilate(~region, 0.005)
        outline[edge] = (255, 0, 255)
        composite = Image.fromarray(outline, "RGB")
        ImageDraw.Draw(composite).rectangle(boxes[name], outline=(255, 255, 0))
        _label(ImageDraw.Draw(composite), (2, 2), f"{name} stood in its box", (255, 255, 255))
        _label(ImageDraw.Draw(composite), (2, 15), "magenta: harmonised region", (255, 0, 255))
        tiles += [_tile(reference, f"{name} reference"),
                  _tile(Image.fromarray(np.rint(alpha * 255).astype(np.uint8)).convert("RGB"),
                        "its matte (known; tiny U2-Net is random)"),
                  _tile(_checkerboard(reference, alpha), "cut-out: soft alpha"),
                  composite]
    return _save(_sheet(tiles, 4), out / "matte.png")


# ---- placement boxes and the ground plane -----------------------------------------------------
def placement_section(out: Path) -> Path:
    room = test_room()
    plane = ground.fit_ground_plane(room.depth)
    rgb = np.asarray(room.photo).astype(float)
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
    obj = ground.choose_object_box(room.depth, "a vase on the right")
    draw.rectangle(obj.box, outline=(255, 0, 255), width=2)
    _label(draw, (obj.box[0], obj.box[3] + 1), "object: 'a vase on the right'", (255, 0, 255))
    return _save(canvas.resize((canvas.width * 2, canvas.height * 2), Image.Resampling.NEAREST),
                 out / "placement.png")


# ---- angle change -----------------------------------------------------------------------------
ANGLES_SHOWN = ("eye level, front-right", "high angle, front", "low angle, front-left",
                "eye level, right side")


def angle_section(out: Path) -> Path:
    room = test_room()
    tiles = [room.photo.copy()]
    _label(ImageDraw.Draw(tiles[0]), (2, 2), "source", (255, 255, 255))
    for angle in ANGLES_SHOWN:
        job = plan_angle(room.photo, room.depth, angle, "")
        rgb = np.asarray(job.view.image).copy()
        rgb[job.view.hole_mask] = (255, 0, 255)
        tile = Image.fromarray(rgb, "RGB")
        share = job.view.hole_mask.mean()
        _label(ImageDraw.Draw(tile), (2, 2), f"{angle}: {share:.0%} revealed", (255, 255, 255))
        tiles.append(tile)
    return _save(_sheet(tiles, 3), out / "angle.png")


# ---- carousel shot list -----------------------------------------------------------------------
def carousel_section(out: Path, cache_dir: Path) -> Path:
    from retouch.models.store import ModelStore
    from retouch.models.tiny import build_tiny_models
    from retouch.pipelines import carousel
    from retouch.pipelines.common import RunContext
    from retouch.serving.tasks import parse_request

    build_tiny_models(cache_dir)
    store = ModelStore(profile="tiny", device="cpu", cache_dir=cache_dir)
    photo = test_room((128, 96)).photo
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
    return _save(sheet, out / "carousel.png")


SECTIONS = {"regions": regions_section, "matte": matte_section,
            "placement": placement_section, "angle": angle_section,
            "carousel": carousel_section}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gallery"))
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".retouch" / "tiny",
                        help="where the tiny twins are built (the carousel section runs them)")
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sections:
        section = SECTIONS[name]
        path = section(args.out, args.cache_dir) if name == "carousel" else section(args.out)
        print(path, f"{path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
