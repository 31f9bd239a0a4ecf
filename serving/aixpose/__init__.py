"""The AIXpose API surface (`/v1`): projects, pictures and enhancements with version lineage,
catalog, agent and quick actions, credits. `router` is mounted by `serving.app`; videos and
webhooks live beside it (`/v1/videos`, `/v1/webhooks/...`).

Quickstart (a local `retouch serve`):

    retouch accounts create --name Agency --plan plus --credits 5000
    retouch keys create --account acct_... --surface aixpose      # → aix_live_...
    POST /v1/projects                      {"name", "output", "picture_aspect_ratio",
                                            "picture_resolution": "1K"|"2K"|"4K"} → project
    POST /v1/projects/{id}/pictures        JSON {"source": {"type": "url", "url"} |
                                            {"type": "base64", "media_type", "data"},
                                            "scene_type", "scene_location", "webhook_url"}
                                           or multipart `file` + the same fields → picture
    POST /v1/pictures/{id}/enhancements    {"instruction": {"source": "preset", "actions": [...]}
                                            | {"source": "custom", "prompt"}
                                            | {"source": "quick_action", "quick_action_id"}
                                            (+ "consistent_with": an approved picture's id),
                                            "variants": 1-4, "aspect_ratio", "resolution",
                                            "webhook_url"}
                                           → {"object": "list", "data": [picture, ...]}
    GET  /v1/pictures/{id}                 poll `status` until completed; `public_url`
    POST /v1/pictures/{id}/approve | /feedback {"rating": 1-5, "comment"}
    POST /v1/projects/{id}/publish         → the project with `published_media`

Every POST takes `Idempotency-Key` (same key + same body → the same resource, 200). Objects are
returned at the top level (`project.id`, `picture.id`); lists as `{"object": "list", "data",
"has_more", "next_cursor"}`; errors in the Wixma error shape. One enhancement is one job with
`variants` outputs: charged once (Σ action credits × variants, see `/v1/catalog/actions`),
refunded in full if it fails.
"""

from fastapi import APIRouter

from . import routes_agent, routes_catalog, routes_credits, routes_organization, routes_pictures
from . import routes_projects, routes_videos, routes_webhooks

router = APIRouter()
for _module in (routes_projects, routes_pictures, routes_catalog, routes_agent, routes_credits,
                routes_videos, routes_webhooks, routes_organization):
    router.include_router(_module.router)
