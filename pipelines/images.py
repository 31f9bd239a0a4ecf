"""Image bytes at the edge: validate uploads/URLs into RGB PIL images, encode outputs.

`decode_image` accepts only real PNG, JPEG and WEBP files (magic bytes checked, then fully
decoded), up to 50 MB and 16..12000 px per side, applies the EXIF orientation and returns an RGB
image (transparent pixels are flattened onto white). Anything else is
`PipelineInputError(field, ...)`.

`encode_image` writes png/webp/jpeg with fixed encoder settings and no metadata, so the same
pixels always give the same bytes.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import PipelineInputError
from .vocabulary import IMAGE_MEDIA_TYPES, MAX_IMAGE_BYTES

MIN_SIDE = 16
MAX_SIDE = 12000
MAX_PIXELS = 100_000_000


def sniff_format(data: bytes) -> str | None:
    """The container format from magic bytes: 'PNG', 'JPEG', 'WEBP' or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, field: str) -> Image.Image:
    """Validate and decode image bytes into an RGB image, or `PipelineInputError(field, ...)`."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise PipelineInputError(field, "image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise PipelineInputError(field,
                                 f"image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    fmt = sniff_format(bytes(data[:16]))
    if fmt is None:
        raise PipelineInputError(field, "not a PNG, JPEG or WEBP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size
            if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE) \
                    or width * height > MAX_PIXELS:
                raise PipelineInputError(field, f"image is {width}x{height}; each side must be "
                                          f"{MIN_SIDE}..{MAX_SIDE} px")
            image.load()
    except PipelineInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PipelineInputError(field,
                                 f"could not decode the {fmt} image ({exc.__class__.__name__})") \
            from None
    image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of any PIL image; alpha is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def encode_image(image: Image.Image, output_format: str) -> bytes:
    """Encode to png/webp/jpeg bytes; deterministic for the same pixels. RGBA kept for png/webp."""
    fmt = output_format.lower()
    if fmt not in IMAGE_MEDIA_TYPES:
        raise PipelineInputError("options.output_format", f"unsupported format {output_format!r}")
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if fmt == "jpeg" and image.mode == "RGBA":
        image = to_rgb(image)
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", optimize=False, compress_level=6)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=90, method=4, exact=True)
    else:
        image.save(buffer, format="JPEG", quality=92, subsampling=0, optimize=False)
    return buffer.getvalue()


def media_type(image_format: str) -> str:
    """`image/png` for `png` / `PNG` (an output format or a sniffed container format)."""
    return IMAGE_MEDIA_TYPES[image_format.lower()]
