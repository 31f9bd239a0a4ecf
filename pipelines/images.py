"""Image bytes at the edge: validate uploads/URLs into RGB PIL images, encode outputs.

`decode_image` accepts only real, single-frame PNG, JPEG and WEBP files (magic bytes checked,
then fully decoded) of at most 50 MB, 16..12000 px per side, at most 100 megapixels and an
aspect ratio of at most 20:1. The size is checked from the header before any pixel is
decoded, so a small file that claims a huge image costs nothing; a PNG whose header promises
more pixels than its data holds is refused as truncated. The EXIF orientation is applied and an
RGB image returned (CMYK, 16-bit and palette images are converted; transparent pixels are
flattened onto white). Anything else is `PipelineInputError(field, ...)` with a message that
says why.

`encode_image` writes png/webp/jpeg with fixed encoder settings and no metadata, so the same
pixels always give the same bytes.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from .errors import PipelineInputError
from .vocabulary import IMAGE_MEDIA_TYPES, MAX_IMAGE_BYTES

MIN_SIDE = 16
MAX_SIDE = 12000
MAX_PIXELS = 100_000_000
MAX_ASPECT_RATIO = 20  # longer side / shorter side

# The format's own image class reads the header without Pillow's global decompression-bomb
# check (a warning from 89.5 Mpx, an error from 179 Mpx); `check_dimensions` is ours.
_IMAGE_CLASSES = {"PNG": PngImagePlugin.PngImageFile, "JPEG": JpegImagePlugin.JpegImageFile,
                  "WEBP": WebPImagePlugin.WebPImageFile}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  Image.DecompressionBombError)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # (x start, y start, x step, y step) of the seven interlace passes
_SUSPICIOUS_RATIO = 100  # verify PNG data when pixels outnumber file bytes this much


def sniff_format(data: bytes) -> str | None:
    """The container format from magic bytes: 'PNG', 'JPEG', 'WEBP' or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_dimensions(width: int, height: int, field: str) -> None:
    """The documented input limits: sides 16..12000 px, at most 100 Mpx, at most 20:1."""
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE) \
            or width * height > MAX_PIXELS:
        raise PipelineInputError(field, f"image is {width}x{height}; each side must be "
                                        f"{MIN_SIDE}..{MAX_SIDE} px and the image at most "
                                        f"{MAX_PIXELS // 1_000_000} megapixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise PipelineInputError(field, f"image is {width}x{height}; its aspect ratio may be "
                                        f"at most {MAX_ASPECT_RATIO}:1")


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
        image = _IMAGE_CLASSES[fmt](io.BytesIO(data))  # the header only
    except _DECODE_ERRORS:
        raise PipelineInputError(field, f"could not decode the {fmt} header: the file is "
                                        "corrupt") from None
    check_dimensions(image.width, image.height, field)
    if getattr(image, "n_frames", 1) > 1:
        raise PipelineInputError(field, f"animated {fmt} images are not accepted; send one "
                                        "frame")
    try:
        image.load()
    except _DECODE_ERRORS:
        raise PipelineInputError(field, f"could not decode the {fmt} image: the data is "
                                        "truncated or corrupt") from None
    if fmt == "PNG" and image.width * image.height > _SUSPICIOUS_RATIO * len(data) \
            and not png_data_is_complete(bytes(data)):
        raise PipelineInputError(field, f"the PNG header promises {image.width}x{image.height} "
                                        "pixels but the data is truncated")
    image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def png_data_is_complete(data: bytes) -> bool:
    """Whether the IDAT stream inflates to at least what the IHDR's size, colour type, bit
    depth and interlacing need (inflating at most that much: a zip bomb stops early)."""
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    bits = _PNG_CHANNELS.get(color_type, 4) * depth

    def scanlines(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w and h else 0

    if interlace:
        needed = sum(scanlines((width - x + dx - 1) // dx, (height - y + dy - 1) // dy)
                     for x, y, dx, dy in _ADAM7)
    else:
        needed = scanlines(width, height)
    inflater, produced, offset = zlib.decompressobj(), 0, 8
    while offset + 8 <= len(data) and produced < needed:
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            chunk = data[offset + 8:offset + 8 + length]
            try:
                produced += len(inflater.decompress(chunk, needed - produced))
            except zlib.error:
                return False
        offset += 12 + length
    return produced >= needed


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
