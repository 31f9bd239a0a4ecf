"""`/v1/organization`: the tenant's name, branding (watermark on published pictures) and the
default outputs new projects get."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from retouch.serving.core import organizations
from retouch.serving.core.db import transaction
from retouch.serving.core.image_refs import store_upload
from retouch.serving.core.tables import ApiKey
from retouch.serving.deps import READ, WRITE, ServicesDep

from .deps import aixpose_key, responses
from .routes_pictures import _base64_image
from .responses import OrganizationObject
from .schemas import OrganizationPatch

router = APIRouter(tags=["aixpose organization"])


@router.get("/organization", response_model=OrganizationObject, responses=responses())
def get_organization(services: ServicesDep,
                     key: Annotated[ApiKey, Depends(aixpose_key(READ))]) -> dict:
    """The organization: name, branding and default output preferences."""
    with transaction(services.session_factory) as session:
        organization = organizations.get_organization(session, key.account_id)
        return organizations.organization_payload(session, organization, services.storage.url)


@router.patch("/organization", response_model=OrganizationObject,
              responses=responses(400))
def patch_organization(body: OrganizationPatch, services: ServicesDep,
                       key: Annotated[ApiKey, Depends(aixpose_key(WRITE))]) -> dict:
    """Change the given fields only. `branding.logo` is an image source (`{type: url|base64}`)
    stored once; branding can be enabled once there is a logo. Enabled branding is composited
    onto pictures when a project is published."""
    branding = body.branding.model_dump(exclude_none=True, exclude={"logo"}) \
        if body.branding else None
    logo = body.branding.logo if body.branding else None
    image = None
    if logo is not None:
        image = services.fetcher.fetch(logo.url, "branding.logo.url").image \
            if logo.type == "url" else _base64_image(logo, "branding.logo")
    with transaction(services.session_factory) as session:
        logo_upload_id = store_upload(session, services.storage, key, image, reuse=True).id \
            if image is not None else None
        organization = organizations.update_organization(
            session, organizations.get_organization(session, key.account_id), name=body.name,
            branding=branding, logo_upload_id=logo_upload_id,
            default_output=body.default_output.model_dump(exclude_none=True)
            if body.default_output else None)
        return organizations.organization_payload(session, organization, services.storage.url)
