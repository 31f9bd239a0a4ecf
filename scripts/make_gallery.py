"""Pictures of what the models decided on a test photo, written to docs/gallery/.

    python -m retouch.scripts.make_gallery --photo room.jpg --profile sdxl --device cuda

One function per section (`SECTIONS`); each takes (store, photo, out_dir) and writes small PNGs.
With the tiny profile the pictures show the plumbing only (random twins cannot see a room).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from retouch.models.store import ModelStore
from retouch.pipelines import scene
from retouch.pipelines.enhance import enhancement_alpha

MAX_SIDE = 512  # keeps each PNG well under 200 KB


def _save(image: Image.Image, path: Path) -> None:
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    image.save(path, optimize=True)


def region_masks(store, photo: Image.Image, out: Path) -> None:
    """The source dimmed outside each enhancement region's feathered alpha."""
    for region in scene.SCENE_REGIONS:
        alpha = enhancement_alpha(store, photo, [region])[..., None]
        shown = np.asarray(photo, dtype=np.float32) * (0.25 + 0.75 * alpha)
        _save(Image.fromarray(shown.astype(np.uint8)), out / f"region-{region}.png")


def matte(store, photo: Image.Image, out: Path) -> None:
    """The matting alpha and the cut-out on a checkerboard."""
    alpha = scene.subject_alpha(store, photo)
    _save(Image.fromarray(np.rint(alpha * 255).astype(np.uint8), "L"), out / "matte-alpha.png")
    yy, xx = np.mgrid[0:photo.height, 0:photo.width]
    board = np.where(((yy // 16 + xx // 16) % 2)[..., None] == 0, 200, 255).astype(np.float32)
    a = alpha[..., None]
    shown = np.asarray(photo, dtype=np.float32) * a + board * (1 - a)
    _save(Image.fromarray(shown.astype(np.uint8)), out / "matte-cutout.png")


SECTIONS = {"regions": region_masks, "matte": matte}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("docs/gallery"))
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    args = parser.parse_args(argv)
    store = ModelStore(profile=args.profile, device=args.device)
    photo = Image.open(args.photo).convert("RGB")
    photo.thumbnail((1024, 1024))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sections:
        SECTIONS[name](store, photo, args.out)


if __name__ == "__main__":
    main()
