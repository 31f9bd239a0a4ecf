"""The gallery can be remade: `scripts/make_gallery.py`'s model-free sections run on the
synthetic test room and write small PNGs (the carousel section runs the tiny twins and is left
to the script itself)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from retouch.models.registry import ADE20K_LABELS
from retouch.scripts import make_gallery


def test_the_test_room_has_known_depth_and_labels_for_every_region_shown():
    room = make_gallery.test_room((128, 96))
    assert room.depth.shape == room.labels.shape == (96, 128)
    names = {ADE20K_LABELS[i] for i in np.unique(room.labels)}
    assert names == {"wall", "floor", "windowpane", "cabinet"}


def test_the_model_free_sections_write_small_pngs(tmp_path):
    sections = ["regions", "matte", "placement", "angle"]
    make_gallery.main(["--out", str(tmp_path), "--sections", *sections])
    for name in ("regions", "matte", "placement", "angle"):
        path = tmp_path / f"{name}.png"
        assert path.stat().st_size < make_gallery.MAX_BYTES, name
        assert Image.open(path).width >= 512
