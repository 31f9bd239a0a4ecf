"""The AIXpose API surface (`/v1`): projects, pictures and enhancements with version lineage,
catalog, agent and quick actions, credits. `router` is mounted by `serving.app`."""

from fastapi import APIRouter

from . import routes_agent, routes_catalog, routes_credits, routes_pictures, routes_projects
from . import routes_videos, routes_webhooks

router = APIRouter()
for _module in (routes_projects, routes_pictures, routes_catalog, routes_agent, routes_credits,
                routes_videos, routes_webhooks):
    router.include_router(_module.router)
