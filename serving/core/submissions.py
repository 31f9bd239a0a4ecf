"""Starting generations and importing images: the sequences every API surface shares.

The Wixma HTTP routes and the MCP tools call these, so both enforce the same allowed tools,
executor availability, SSRF-safe URL fetching, image validation and atomic reservation.
"""

from __future__ import annotations

from . import jobs, keys
from .db import transaction
from .errors import pipeline_input_errors
from .image_refs import (job_body, primary_input_url, resolve_image_refs, store_upload,
                         stored_image_size)


def submit_generation(services, key, request, *, idempotency_key: str | None = None,
                      surface: str = "wixma"):
    """Create the job for a typed request; returns `(generation, replayed)`.

    Checks the key's allowed tools and that the executor is up, then resolves every image
    reference (URLs fetched and validated, stored as uploads) before the job exists, so a bad
    image fails naming its field, and an output the pipeline could not make (an upscale past
    its pixel cap) fails too; then reserves slots, budgets and credits in one transaction.
    """
    keys.require_tool(key, request.tool)
    services.require_executor()
    resolved = resolve_image_refs(services.session_factory, services.storage, services.fetcher,
                                  key, request)
    check_output_limits(services.storage, request, resolved)
    return jobs.create_job(
        services.session_factory, key, request, job_body(request, resolved),
        idempotency_key=idempotency_key, input_image=primary_input_url(resolved),
        surface=surface, idempotency_ttl_hours=services.settings.idempotency_ttl_hours)


def check_output_limits(storage, request, resolved) -> None:
    """Refuse, before anything is reserved, a job whose output the pipeline could not make: an
    upscale past the output pixel cap (`InvalidInput` naming `input.image`)."""
    if request.tool == "upscaler":
        from retouch.pipelines.upscale import check_upscale_output

        width, height = stored_image_size(storage, resolved["input.image"])
        with pipeline_input_errors():
            check_upscale_output(width, height, request.options.scale)


def import_image_url(services, key, url: str, field: str = "url"):
    """Fetch an HTTPS image (SSRF-safe, real bytes validated) and store it as an upload of `key`.

    The same bytes imported again by the same key give back the same upload.
    """
    fetched = services.fetcher.fetch(url, field)
    with transaction(services.session_factory) as session:
        return store_upload(session, services.storage, key, fetched.image, reuse=True)
