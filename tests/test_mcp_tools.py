"""The MCP server over real Streamable HTTP (the SDK's client against uvicorn): the seed's nine
tools and the cancel tool, ping, inline image results, base64 rejection, and the API key's restrictions on every call."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from datetime import datetime, timedelta, timezone

import httpx
from PIL import Image

from retouch.pipelines.vocabulary import AI_FILTERS, ANGLES, TIMES
from retouch.serving.tasks import TASKS
from retouch.serving.core import jobs
from retouch.serving.mcp.server import SEED_TOOL_NAMES, TOOL_NAMES

from api_fixtures import image_bytes, serve_routes
from mcp_fixtures import mcp_session, serve_app, tool_error, tool_json

PHOTO = image_bytes(32, 24, color=(30, 140, 220))
MASK = image_bytes(32, 24, color=(255, 255, 255))


def in_process_executor(tiny_store):
    from retouch.serving.runner import TaskRunner
    from retouch.serving.executor import InProcessExecutor

    return lambda services: InProcessExecutor(services, lambda: TaskRunner(tiny_store))


async def wait_completed(session, generation_id: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await session.call_tool("wixma_get_generation",
                                         {"generation_id": generation_id})
        generation = tool_json(result)["generation"]
        if generation["status"] in ("completed", "failed"):
            return result, generation
        await asyncio.sleep(0.1)
    raise AssertionError(f"generation {generation_id} did not finish")


def test_all_nine_tools_over_streamable_http(tmp_path, tiny_store):
    with serve_routes({"/photo.png": (200, {"Content-Type": "image/png"}, PHOTO),
                       "/mask.png": (200, {"Content-Type": "image/png"}, MASK)}) as images, \
            serve_app(tmp_path, executor=in_process_executor(tiny_store)) as app:
        account_id = app.account(plan="pro", credits=5000)
        _, secret = app.key(account_id)

        async def scenario():
            async with mcp_session(app.mcp_url, secret) as session:
                await session.send_ping()
                listed = {tool.name: tool for tool in (await session.list_tools()).tools}
                # The seed's nine tools, and cancel beyond the seed (docs/mcp.md).
                assert len(SEED_TOOL_NAMES) == 9
                assert set(listed) == set(TOOL_NAMES) == {*SEED_TOOL_NAMES,
                                                          "wixma_cancel_generation"}
                schema = listed["wixma_photographer"].input_schema["properties"]
                assert schema["mode"]["enum"] == list(TASKS.modes("photographer"))
                assert schema["angle"]["anyOf"][0]["enum"] == list(ANGLES)
                assert schema["time"]["anyOf"][0]["enum"] == list(TIMES)
                assert listed["wixma_ai_filter"].input_schema["properties"]["filter"]["enum"] \
                    == list(AI_FILTERS)
                assert listed["wixma_ai_filter"].input_schema["required"] == ["filter", "image"]

                # Rejected before any job exists: base64 and data URLs, with a clear tool error.
                raw = base64.b64encode(PHOTO).decode()
                error = tool_error(await session.call_tool("wixma_upscale_image",
                                                           {"image": raw}))
                assert error["code"] == "invalid_input" and error["details"]["field"] == "image"
                assert "base64" in error["message"]
                error = tool_error(await session.call_tool("wixma_photographer", {
                    "mode": "time_change",
                    "main_image": {"url": f"data:image/png;base64,{raw}"}}))
                assert error["details"]["field"] == "main_image"
                error = tool_error(await session.call_tool("wixma_photographer", {
                    "mode": "angle_change", "main_image": f"{images}/photo.png"}))
                assert error["details"]["field"] == "angle"  # the argument, not input.angle

                uploaded = tool_json(await session.call_tool(
                    "wixma_upload_image", {"url": f"{images}/photo.png"}))
                assert uploaded["main_image"] == {"upload_id": uploaded["upload_id"]}
                assert uploaded["images"] == [uploaded["main_image"]]
                assert (uploaded["upload"]["width"], uploaded["upload"]["height"]) == (32, 24)

                # A completed generation: the URL and the same bytes inline as image content.
                upscale = tool_json(await session.call_tool(
                    "wixma_upscale_image", {"image": f"{images}/photo.png", "scale": 2}))
                result, done = await wait_completed(session, upscale["generation"]["id"])
                assert done["status"] == "completed", done
                inline = [block for block in result.content if block.type == "image"]
                assert len(inline) == 1 and inline[0].mime_type == "image/png"
                data = base64.b64decode(inline[0].data)
                assert Image.open(io.BytesIO(data)).size == (64, 48)
                assert httpx.get(done["output_url"]).content == data

                created = {"wixma_upscale_image": done}
                for name, arguments in [
                    ("wixma_generate_image", {"prompt": "a red cube", "quality": "low"}),
                    ("wixma_edit_image", {"images": uploaded["images"], "quality": "low",
                                          "prompt": "studio background"}),
                    ("wixma_photographer", {"mode": "erase_edit", "quality": "low",
                                            "main_image": uploaded["main_image"],
                                            "mask_image": f"{images}/mask.png"}),
                    ("wixma_ai_filter", {"filter": "noir-bw", "quality": "high",
                                         "image": uploaded["main_image"]}),
                ]:
                    result = await session.call_tool(name, arguments)
                    assert not result.is_error, result
                    generation = tool_json(result)["generation"]
                    assert generation["status"] in ("pending", "processing")
                    created[name] = generation
                assert created["wixma_photographer"]["mode"] == "erase_edit"
                assert created["wixma_ai_filter"]["cost_credits"] == 200  # high quality

                listed_jobs = tool_json(await session.call_tool("wixma_list_generations",
                                                                {"limit": 10}))
                assert {g["id"] for g in listed_jobs["data"]} == \
                    {g["id"] for g in created.values()}
                credits = tool_json(await session.call_tool("wixma_get_credits", {}))["credits"]
                spent = sum(g["cost_credits"] for g in created.values())
                assert credits["balance"] == 5000 - spent
                assert credits["key"]["total"]["used"] == spent
                return credits

        credits = asyncio.run(scenario())
        over_http = httpx.get(f"{app.base_url}/api/v1/credits",
                              headers={"Authorization": f"Bearer {secret}"}).json()["credits"]
        # The same core answers both surfaces (slots may have been freed since).
        assert (over_http["balance"], over_http["key"]) == (credits["balance"], credits["key"])


def test_key_restrictions_apply_to_every_tool_call(tmp_path):
    with serve_app(tmp_path, allow_private_urls=False) as app:
        account_id = app.account(plan="plus", credits=1000)
        _, full = app.key(account_id)
        _, limited = app.key(account_id, tools=["generator"], per_request_limit=50,
                             scopes=["generations:create", "generations:read"],
                             rate_limit_per_minute=3)
        _, free_secret = app.key(app.account(plan="free"))
        paused_id, paused = app.key(account_id)
        _, expired = app.key(account_id, expires_at=datetime.now(timezone.utc) - timedelta(1))
        with app.services.session_factory.begin() as session:
            from retouch.serving.core.keys import set_key_status

            set_key_status(session, paused_id, "paused")

        async def scenario():
            async with mcp_session(app.mcp_url, limited) as session:
                error = tool_error(await session.call_tool("wixma_upscale_image", {
                    "image": {"upload_id": "00000000-0000-0000-0000-000000000000"}}))
                assert error["code"] == "tool_not_allowed"
                error = tool_error(await session.call_tool("wixma_get_credits", {}))
                assert error["code"] == "forbidden"
                assert error["details"]["required_scope"] == "credits:read"
                error = tool_error(await session.call_tool("wixma_generate_image", {
                    "prompt": "x", "quality": "medium"}))  # 110 credits > 50 per request
                assert error["code"] == "per_request_limit_exceeded"
                error = tool_error(await session.call_tool("wixma_generate_image",
                                                           {"prompt": "x", "quality": "low"}))
                assert error["code"] == "rate_limit_exceeded"  # the 4th call this minute
            async with mcp_session(app.mcp_url, full) as session:
                # URLs are fetched with the HTTP API's SSRF rules before anything is stored.
                for url in ("https://127.0.0.1/a.png", "https://169.254.169.254/latest"):
                    error = tool_error(await session.call_tool("wixma_upload_image",
                                                               {"url": url}))
                    assert error["code"] == "invalid_input" and "private" in error["message"]
                error = tool_error(await session.call_tool("wixma_edit_image", {
                    "images": ["https://10.0.0.1/a.png"], "prompt": "x"}))
                assert error["details"]["field"] == "images[0]"
                # An unexpected failure is the seed's service_unavailable, never a traceback.
                created = tool_json(await session.call_tool("wixma_generate_image", {
                    "prompt": "x", "quality": "low"}))["generation"]
                job = jobs.lease_next_job(app.services.session_factory, "worker", 30)
                assert job.id == created["id"]
                jobs.complete_job(app.services.session_factory, job.id, "worker",
                                  ["outputs/never-stored.png"])
                error = tool_error(await session.call_tool("wixma_get_generation", {
                    "generation_id": created["id"]}))
                assert error["code"] == "service_unavailable"
                assert "Traceback" not in error["message"]
            async with mcp_session(app.mcp_url, free_secret) as session:
                error = tool_error(await session.call_tool("wixma_list_generations", {}))
                assert error["code"] == "subscription_required"
            for secret, reason in ((paused, "paused"), (expired, "expired")):
                async with mcp_session(app.mcp_url, secret) as session:
                    error = tool_error(await session.call_tool("wixma_list_generations", {}))
                    assert error["code"] == "forbidden" and error["details"]["reason"] == reason

        asyncio.run(scenario())
        # Nothing was charged by the refused calls (only the one job that ran).
        balance = httpx.get(f"{app.base_url}/api/v1/credits", headers={
            "Authorization": f"Bearer {app.key(account_id)[1]}"}).json()["credits"]["balance"]
        assert balance == 1000 - 40
        # A page on another origin cannot drive the endpoint (DNS-rebinding protection).
        cross_origin = httpx.post(app.mcp_url, json={"jsonrpc": "2.0", "id": 1,
                                                     "method": "ping"},
                                  headers={"Authorization": f"Bearer {full}",
                                           "Origin": "http://evil.example",
                                           "Accept": "application/json, text/event-stream"})
        assert cross_origin.status_code == 403
        # Unknown credentials never reach a tool: 401 pointing at the resource metadata.
        response = httpx.post(app.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                              headers={"Authorization": "Bearer wx_live_unknown",
                                       "Accept": "application/json, text/event-stream"})
        assert response.status_code == 401
        assert f'resource_metadata="{app.base_url}/.well-known/oauth-protected-resource/mcp"' \
            in response.headers["www-authenticate"]


def test_transport_security_follows_the_public_url():
    from retouch.serving.mcp import transport_security
    from retouch.serving.settings import Settings

    public = transport_security(Settings(public_base_url="https://wixma.example.com"))
    assert public.enable_dns_rebinding_protection
    assert "wixma.example.com" in public.allowed_hosts
    assert "https://wixma.example.com" in public.allowed_origins
    assert not transport_security(Settings(host="0.0.0.0")).enable_dns_rebinding_protection


def test_creation_tools_take_a_seed_and_generations_report_it(tmp_path):
    with serve_app(tmp_path) as app:
        _, secret = app.key(app.account(plan="pro", credits=5000))

        async def scenario():
            async with mcp_session(app.mcp_url, secret) as session:
                listed = {tool.name: tool for tool in (await session.list_tools()).tools}
                for name in ("wixma_generate_image", "wixma_edit_image", "wixma_photographer",
                             "wixma_ai_filter", "wixma_upscale_image"):
                    assert "seed" in listed[name].input_schema["properties"], name
                    assert "seed" not in listed[name].input_schema.get("required", [])
                created = tool_json(await session.call_tool("wixma_generate_image", {
                    "prompt": "a cube", "quality": "low", "seed": 1234}))["generation"]
                assert created["seed"] == 1234 and created["model_revisions"] is None
                got = tool_json(await session.call_tool(
                    "wixma_get_generation", {"generation_id": created["id"]}))["generation"]
                assert got["seed"] == 1234
                drawn = tool_json(await session.call_tool("wixma_generate_image", {
                    "prompt": "a cube", "quality": "low"}))["generation"]
                assert isinstance(drawn["seed"], int) and 0 <= drawn["seed"] < 2**32
                error = tool_error(await session.call_tool("wixma_generate_image", {
                    "prompt": "a cube", "seed": 2**32}))
                assert error["code"] == "invalid_input" and error["details"]["field"] == "seed"

        asyncio.run(scenario())
