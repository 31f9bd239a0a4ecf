"""Inline images for MCP tool results that every client can read.

A tool result travels as ONE server-sent event, and the official MCP SDKs refuse events over
1 MiB. So `wixma_get_generation` inlines at most `INLINE_BUDGET_BYTES` of image data in all
(base64 adds a third): each output that fits its share is inlined as stored; a larger one is
replaced by a downscaled WEBP preview that fits it. The full-resolution files stay at
`output_url` / `output_urls`. Previews are made once per output and kept in storage beside it
(outputs never change).
"""

from __future__ import annotations

import io
import math

from PIL import Image

INLINE_BUDGET_BYTES = 384 * 1024  # raw bytes of all inline images of one result
PREVIEW_MAX_SIDE = 1024
MIN_PREVIEW_SIDE = 64
PREVIEW_QUALITY = 70


def preview_key(output_key: str) -> str:
    """`outputs/<job>/1.png` → `previews/<job>/1.webp`."""
    stem = output_key.removeprefix("outputs/").rsplit(".", 1)[0]
    return f"previews/{stem}.webp"


def make_preview(data: bytes, max_bytes: int, max_side: int = PREVIEW_MAX_SIDE) -> bytes | None:
    """A WEBP of at most `max_bytes` with the longer side at most `max_side`: encoded at
    `PREVIEW_QUALITY`, then shrunk by the size it overshot (about two tries); None if not even a
    `MIN_PREVIEW_SIDE` preview fits."""
    with Image.open(io.BytesIO(data)) as source:
        source.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
        image = source.convert("RGBA" if "A" in source.getbands() else "RGB")
    side = max_side
    for _ in range(8):
        scaled = image.copy()
        scaled.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        scaled.save(buffer, format="WEBP", quality=PREVIEW_QUALITY, method=4)
        if buffer.tell() <= max_bytes:
            return buffer.getvalue()
        if side == MIN_PREVIEW_SIDE:
            return None
        # Bytes grow with the pixel count: shrink the side by the square root of the overshoot.
        side = max(MIN_PREVIEW_SIDE, int(side * 0.9 * math.sqrt(max_bytes / buffer.tell())))
    return None


def inline_images(storage, output_keys: list[str],
                  budget: int = INLINE_BUDGET_BYTES) -> list[tuple[bytes, str]]:
    """`(bytes, media type)` to inline for each output, within `budget` in all."""
    if not output_keys:
        return []
    share = budget // len(output_keys)
    inlined: list[tuple[bytes, str]] = []
    for output_key in output_keys:
        cached = preview_key(output_key)
        if storage.exists(cached):
            preview = storage.get(cached)
            if len(preview) <= share:
                inlined.append((preview, "image/webp"))
                continue
        data = storage.get(output_key)
        if len(data) <= share:
            inlined.append((data, storage.media_type(output_key)))
            continue
        preview = make_preview(data, share)
        if preview is not None:
            storage.put(cached, preview, "image/webp")
            inlined.append((preview, "image/webp"))
    return inlined
