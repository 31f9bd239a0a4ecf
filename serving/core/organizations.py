"""The AIXpose organization: the account's tenant settings (name, branding, default outputs),
and the watermark its branding composites onto published pictures.

Branding: a logo (an upload of the account), its `placement` (a corner or the centre), `opacity`
(0..1, multiplied into the logo's own alpha) and `scale` (the logo's width as a fraction of the
picture's width; the logo keeps its aspect ratio, within a margin of 2% of the shorter side).
When `enabled`, publishing stores a branded copy of each approved picture and publishes that.
"""

from __future__ import annotations

import io
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


def brand_image(data: bytes, media_type: str, logo_data: bytes,
                branding: dict[str, Any]) -> bytes:
    """`data` (PNG/JPEG/WEBP) with the logo composited at the branding's placement, in the
    same format and size; pixels outside the logo's box are unchanged (exactly, for PNG)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    logo = Image.open(io.BytesIO(logo_data)).convert("RGBA")
    width = max(1, round(image.width * float(branding["scale"])))
    height = max(1, round(logo.height * width / logo.width))
    logo = logo.resize((width, height), Image.LANCZOS)
    alpha = logo.getchannel("A").point(lambda a: round(a * float(branding["opacity"])))
    logo.putalpha(alpha)
    margin = round(min(image.size) * MARGIN)
    placement = branding["placement"]
    x = {"left": margin, "right": image.width - width - margin}.get(
        placement.split("_")[-1], (image.width - width) // 2)
    y = {"top": margin, "bottom": image.height - height - margin}.get(
        placement.split("_")[0], (image.height - height) // 2)
    base = image.convert("RGBA")
    base.alpha_composite(logo, (max(0, x), max(0, y)))
    has_alpha = image.mode in ("RGBA", "LA") or "transparency" in image.info
    out = base if has_alpha else base.convert("RGB")
    return encode_image(out, FORMATS.get(media_type, "png"))
