"""MCP results any official client can read, and the same answers as HTTP.

- `wixma_get_generation` on large outputs, read with the official MCP Python SDK client (which
  refuses any server-sent event over 1 MiB): every result stays well under it, large outputs
  come back as downscaled WEBP previews, the full resolution at `output_url(s)`.
- A revoked `wx_live_` key is `forbidden` (reason `revoked`) on MCP as on HTTP (403).
- A NUL in a tool argument is a JSON-RPC error naming the argument, never a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from PIL import Image

from retouch.serving.core import jobs
from retouch.serving.core.keys import set_key_status

from mcp_fixtures import mcp_session, serve_app, tool_error, tool_json

SDK_EVENT_LIMIT = 1024 * 1024


def noise_png(width: int, height: int) -> bytes:
    """Incompressible pixels: a PNG of about 3 bytes per pixel."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(
        buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def complete_with(services, outputs: list[bytes]) -> str:
    job = jobs.lease_next_job(services.session_factory, "worker", 30)
    keys = []
    for n, data in enumerate(outputs, start=1):
        key = f"outputs/{job.id}/{n}.png"
        services.storage.put(key, data, "image/png")
        keys.append(key)
    assert jobs.complete_job(services.session_factory, job.id, "worker", keys)
    return job.id


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with serve_app(tmp_path_factory.mktemp("mcp-results")) as served:
        yield served


def result_size(result) -> int:
    """The bytes of the tool result's JSON-RPC message (what one SSE event carries)."""
    return len(json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True)))


@pytest.mark.parametrize("outputs", [[(2048, 2048)], [(1024, 1024)] * 10],
                         ids=["one-2048px-output", "carousel-10x1024px"])
def test_large_outputs_are_readable_by_the_official_sdk_client(app, outputs):
    account_id = app.account(plan="pro", credits=10_000)
    _, secret = app.key(account_id)
    files = [noise_png(*size) for size in outputs]
    assert sum(map(len, files)) > 2 * SDK_EVENT_LIMIT  # inlined as-is this could not be read

    async def scenario():
        async with mcp_session(app.mcp_url, secret) as session:
            created = tool_json(await session.call_tool("wixma_generate_image",
                                                        {"prompt": "x", "quality": "low"}))
            generation_id = complete_with(app.services, files)
            assert generation_id == created["generation"]["id"]
            return await session.call_tool("wixma_get_generation",
                                           {"generation_id": generation_id})

    result = asyncio.run(scenario())  # the SDK raises on an event over 1 MiB
    assert not result.is_error
    assert result_size(result) < SDK_EVENT_LIMIT // 2, result_size(result)
    generation = tool_json(result)["generation"]
    urls = generation["output_urls"] or [generation["output_url"]]
    previews = [block for block in result.content if block.type == "image"]
    assert len(previews) == len(files)
    for preview, url, original, size in zip(previews, urls, files, outputs):
        assert preview.mime_type == "image/webp"
        image = Image.open(io.BytesIO(base64.b64decode(preview.data)))
        assert image.format == "WEBP" and max(image.size) <= 1024
        assert image.size[0] / image.size[1] == pytest.approx(size[0] / size[1], rel=0.02)
        assert httpx.get(url).content == original  # full resolution at the URL

    async def again():  # the second read serves the stored previews
        async with mcp_session(app.mcp_url, secret) as session:
            return await session.call_tool("wixma_get_generation",
                                           {"generation_id": generation["id"]})

    assert [b.data for b in asyncio.run(again()).content if b.type == "image"] == \
        [b.data for b in previews]


def test_a_revoked_key_is_forbidden_on_mcp_as_on_http(app):
    account_id = app.account(plan="pro", credits=1000)
    key_id, secret = app.key(account_id)
    with app.services.session_factory.begin() as session:
        set_key_status(session, key_id, "revoked")
    http = httpx.get(f"{app.base_url}/api/v1/credits",
                     headers={"Authorization": f"Bearer {secret}"})
    assert http.status_code == 403
    http_error = http.json()["error"]

    async def scenario():
        async with mcp_session(app.mcp_url, secret) as session:
            return tool_error(await session.call_tool("wixma_get_credits", {}))

    mcp_error = asyncio.run(scenario())
    assert mcp_error["code"] == http_error["code"] == "forbidden"
    assert mcp_error["details"]["reason"] == http_error["details"]["reason"] == "revoked"


def test_a_nul_in_a_tool_argument_is_a_json_rpc_error_naming_it(app):
    _, secret = app.key(app.account(plan="pro"))

    async def scenario():
        async with mcp_session(app.mcp_url, secret) as session:
            with pytest.raises(MCPError) as caught:
                await session.call_tool("wixma_get_generation", {"generation_id": "ab\x00cd"})
            return caught.value.error

    error = asyncio.run(scenario())
    assert error.code == -32602
    assert error.message.startswith("params.arguments.generation_id: ")
    assert error.data["error"]["code"] == "invalid_input"
