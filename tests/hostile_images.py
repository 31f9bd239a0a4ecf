"""A corpus of hostile and unusual image files for the upload and URL tests, built in memory
(no fixtures on disk): decompression bombs, lying headers, truncated and empty files, other
formats renamed `.png`, CMYK and 16-bit images, animation, EXIF rotation, absurd shapes."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def raw_png(width: int, height: int, idat: bytes, *, color_type: int = 0,
            bit_depth: int = 8, interlace: int = 0) -> bytes:
    """A PNG with exactly this IHDR and IDAT payload (the header may lie about the data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def bomb_30000() -> bytes:
    """A few hundred bytes that claim 30000x30000 pixels (900 Mpx) of zeros."""
    return raw_png(30000, 30000, zlib.compress(b"\x00" * (30001 * 4), 9))


def bomb_over_pixel_cap() -> bytes:
    """Inside the side limits (11000x11000) but over the 100-megapixel cap: 121 Mpx."""
    return raw_png(11000, 11000, zlib.compress(b"\x00" * 11001, 9))


def lying_header_truncated() -> bytes:
    """IHDR says 4000x4000 RGB; the data holds ten rows."""
    return raw_png(4000, 4000, zlib.compress(b"\x00" * (10 * (4000 * 3 + 1))), color_type=2)


def lying_header_zip_bomb() -> bytes:
    """IHDR says 64x64 gray; IDAT inflates to 64 MB (far more than the 64x64 image needs)."""
    return raw_png(64, 64, zlib.compress(b"\x00" * (64 * 1024 * 1024), 9))


def interlaced_png(width: int = 300, height: int = 200, missing: int = 0) -> bytes:
    """An Adam7-interlaced gray PNG of zeros (Pillow cannot write interlaced PNGs), optionally
    `missing` bytes short of what its passes need."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2))
    size = 0
    for x, y, dx, dy in passes:
        pass_width, pass_height = -(-(width - x) // dx), -(-(height - y) // dy)
        if pass_width > 0 and pass_height > 0:
            size += pass_height * (1 + pass_width)
    return raw_png(width, height, zlib.compress(b"\x00" * (size - missing)), interlace=1)


def truncated_png() -> bytes:
    data = encoded(Image.effect_noise((128, 128), 60).convert("RGB"), "PNG")
    return data[: len(data) // 2]


def truncated_jpeg() -> bytes:
    data = encoded(Image.effect_noise((128, 128), 60).convert("RGB"), "JPEG", quality=90)
    return data[: len(data) // 2]


def svg() -> bytes:
    return (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" '
            b'height="64"><rect width="64" height="64" fill="red"/></svg>')


def html() -> bytes:
    return b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"


def gif() -> bytes:
    return encoded(Image.new("RGB", (32, 32), (1, 2, 3)), "GIF")


def tiff() -> bytes:
    return encoded(Image.new("RGB", (32, 32), (1, 2, 3)), "TIFF")


def cmyk_jpeg() -> bytes:
    return encoded(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG")


def png_16bit_gray() -> bytes:
    return encoded(Image.new("I;16", (40, 30), 40000), "PNG")


def png_16bit_rgb() -> bytes:
    """48-bit RGB: written by hand (Pillow writes at most 8 bits per RGB channel)."""
    row = b"\x00" + struct.pack(">HHH", 65535, 0, 32768) * 40
    return raw_png(40, 30, zlib.compress(row * 30), color_type=2, bit_depth=16)


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 0, 255))]
    return encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)


def animated_png() -> bytes:
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 0, 255))]
    return encoded(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide x 20 high with EXIF orientation 6 (rotate 90°): shown 20 x 40."""
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(image, "JPEG", exif=exif)


def absurd_aspect() -> bytes:
    return encoded(Image.new("L", (12000, 16), 128), "PNG")


REFUSED = {  # name → (bytes factory, a fragment of the expected message)
    "bomb-30000x30000": (bomb_30000, "30000x30000"),
    "bomb-over-100-megapixels": (bomb_over_pixel_cap, "megapixels"),
    "lying-header-truncated": (lying_header_truncated, "truncated"),
    "interlaced-one-byte-short": (lambda: interlaced_png(missing=1), "truncated"),
    "truncated-png": (truncated_png, "truncated"),
    "truncated-jpeg": (truncated_jpeg, "truncated"),
    "zero-bytes": (lambda: b"", "empty"),
    "gif-renamed-png": (gif, "not a PNG, JPEG or WEBP"),
    "tiff-renamed-png": (tiff, "not a PNG, JPEG or WEBP"),
    "svg-renamed-png": (svg, "not a PNG, JPEG or WEBP"),
    "html-renamed-png": (html, "not a PNG, JPEG or WEBP"),
    "animated-webp": (animated_webp, "animated"),
    "animated-png": (animated_png, "animated"),
    "absurd-aspect-12000x16": (absurd_aspect, "aspect"),
}
ACCEPTED = {  # name → (bytes factory, (width, height) after EXIF orientation)
    "cmyk-jpeg": (cmyk_jpeg, (40, 30)),
    "png-16bit-gray": (png_16bit_gray, (40, 30)),
    "png-16bit-rgb": (png_16bit_rgb, (40, 30)),
    "exif-rotated-jpeg": (exif_rotated_jpeg, (20, 40)),
    # Inflates far past what its 64x64 header needs: harmless, decoding stops at 64x64.
    "lying-header-zip-bomb": (lying_header_zip_bomb, (64, 64)),
    "interlaced-png": (interlaced_png, (300, 200)),
}
