"""The AIXpose organization: the account's tenant settings (name, branding, default outputs),
and the watermark its branding composites onto published pictures.

Branding: a logo (an upload of the account), its `placement` (a corner or the centre), `opacity`
(0..1, multiplied into the logo's own alpha) and `scale` (the logo's width as a fraction of the
picture's width; the logo keeps its aspect ratio, within a margin of 2% of the shorter side).
When `enabled`, publishing stores a branded copy of each approved picture and completed video
(every frame watermarked) and publishes that.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from retouch.pipelines.images import encode_image

from .db import utcnow
from .errors import InvalidInput
from .tables import Account, Organization, Upload
from .timestamps import format_timestamp

PLACEMENTS = ("top_left", "top_right", "bottom_left", "bottom_right", "center")
DEFAULT_BRANDING = {"enabled": False, "placement": "bottom_right", "opacity": 0.8, "scale": 0.2}
MARGIN = 0.02
FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


def get_organization(session: Session, account_id: str) -> Organization:
    organization = session.get(Organization, account_id)
    if organization is None:
        organization = Organization(account_id=account_id, name=None,
                                    branding=dict(DEFAULT_BRANDING), default_output={},
                                    updated_at=utcnow())
        session.add(organization)
        session.flush()
    return organization


def branding_of(organization: Organization) -> dict[str, Any]:
    return {**DEFAULT_BRANDING, **(organization.branding or {})}


def organization_payload(session: Session, organization: Organization, url_for) -> dict[str, Any]:
    account = session.get_one(Account, organization.account_id)
    branding = branding_of(organization)
    logo = session.get(Upload, organization.logo_upload_id) if organization.logo_upload_id \
        else None
    return {"id": organization.account_id, "object": "organization",
            "name": organization.name or account.name,
            "branding": {"enabled": branding["enabled"],
                         "logo_url": url_for(logo.storage_key) if logo else None,
                         "placement": branding["placement"], "opacity": branding["opacity"],
                         "scale": branding["scale"]},
            "default_output": dict(organization.default_output or {}),
            "updated_at": format_timestamp(organization.updated_at)}


def update_organization(session: Session, organization: Organization, *, name: str | None,
                        branding: dict[str, Any] | None, logo_upload_id: str | None,
                        default_output: dict[str, Any] | None) -> Organization:
    """Apply a PATCH: only the given fields change. Enabling branding needs a logo."""
    if name is not None:
        organization.name = name
    if logo_upload_id is not None:
        organization.logo_upload_id = logo_upload_id
    if branding:
        organization.branding = {**branding_of(organization), **branding}
    if branding_of(organization)["enabled"] and organization.logo_upload_id is None:
        raise InvalidInput("branding.logo", "branding needs a logo before it can be enabled")
    if default_output:
        organization.default_output = {**(organization.default_output or {}), **default_output}
    organization.updated_at = utcnow()
    session.flush()
    return organization


def watermark(image: Image.Image, logo: Image.Image, branding: dict[str, Any]) -> Image.Image:
    """`image` (RGBA) with `logo` (RGBA) composited at the branding's placement, scale and
    opacity; pixels outside the logo's box are unchanged."""
    width = max(1, round(image.width * float(branding["scale"])))
    height = max(1, round(logo.height * width / logo.width))
    logo = logo.resize((width, height), Image.LANCZOS)
    logo.putalpha(logo.getchannel("A").point(lambda a: round(a * float(branding["opacity"]))))
    margin = round(min(image.size) * MARGIN)
    vertical, _, horizontal = branding["placement"].partition("_")
    x = {"left": margin, "right": image.width - width - margin}.get(
        horizontal, (image.width - width) // 2)
    y = {"top": margin, "bottom": image.height - height - margin}.get(
        vertical, (image.height - height) // 2)
    out = image.copy()
    out.alpha_composite(logo, (max(0, x), max(0, y)))
    return out


def _logo(logo_data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(logo_data)).convert("RGBA")


def brand_image(data: bytes, media_type: str, logo_data: bytes,
                branding: dict[str, Any]) -> bytes:
    """`data` (PNG/JPEG/WEBP) with the watermark, in the same format and size (pixels outside
    the logo's box exactly unchanged for PNG and lossless WEBP)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    branded = watermark(image.convert("RGBA"), _logo(logo_data), branding)
    has_alpha = image.mode in ("RGBA", "LA") or "transparency" in image.info
    return encode_image(branded if has_alpha else branded.convert("RGB"),
                        FORMATS.get(media_type, "png"))


def brand_video(data: bytes, logo_data: bytes, branding: dict[str, Any]) -> bytes:
    """An MP4 with the watermark on every frame: the video re-encoded (H.264, yuv420p, the same
    size, rate and frame count), the audio packets copied as they are."""
    import av

    logo = _logo(logo_data)
    buffer = io.BytesIO()
    with av.open(io.BytesIO(data), mode="r") as source, \
            av.open(buffer, mode="w", format="mp4") as target:
        video_in = source.streams.video[0]
        audio_in = source.streams.audio[0] if source.streams.audio else None
        rate = video_in.average_rate or 12
        video_out = target.add_stream("libx264", rate=rate)
        video_out.width, video_out.height = video_in.codec_context.width, \
            video_in.codec_context.height
        video_out.pix_fmt = "yuv420p"
        video_out.codec_context.time_base = Fraction(1, int(rate))
        video_out.options = {"preset": "veryfast", "crf": "20"}
        audio_out = target.add_stream_from_template(audio_in) if audio_in is not None else None
        frames = 0
        for packet in source.demux(*(s for s in (video_in, audio_in) if s is not None)):
            if packet.stream is video_in:
                for frame in packet.decode():
                    branded = watermark(frame.to_image().convert("RGBA"), logo, branding)
                    out = av.VideoFrame.from_image(branded.convert("RGB"))
                    out.pts = frames
                    frames += 1
                    target.mux(video_out.encode(out))
            elif packet.dts is not None:
                packet.stream = audio_out
                target.mux(packet)
        target.mux(video_out.encode(None))
    return buffer.getvalue()
