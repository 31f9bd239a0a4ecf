"""The dashboard in headless Debian Chromium (driven by Playwright) against the app under uvicorn
on a loopback port: sign in, create a key, copy its secret, call the API with it, revoke it in
the page and see the API refuse it; start a playground job and watch the page poll it to done."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from retouch.serving.app import build_app
from retouch.serving.core import accounts, jobs, members
from retouch.serving.core.db import transaction
from retouch.serving.services import build_services

from api_fixtures import image_bytes, make_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
EMAIL, PASSWORD = "browser@example.com", "a long enough password"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian chromium is not installed at /usr/bin/chromium (.ci/run installs it)")


@contextmanager
def served_app(tmp_path):
    """The app under uvicorn in a thread, on a loopback port it already holds the socket of."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = make_settings(tmp_path, public_base_url=base)
    services = build_services(settings)
    server = uvicorn.Server(uvicorn.Config(build_app(settings, services=services),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield base, services
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        services.engine.dispose()


def finish_oldest_job(services) -> None:
    """Complete the oldest pending job with one stored output, as a worker would."""
    job = jobs.lease_next_job(services.session_factory, "browser-test", 30)
    key = f"outputs/{job.id}/1.png"
    services.storage.put(key, image_bytes(24, 24, color=(20, 160, 90)), "image/png")
    assert jobs.complete_job(services.session_factory, job.id, "browser-test", [key])


def test_sign_in_create_copy_use_revoke_and_watch_a_job(tmp_path):
    from playwright.sync_api import sync_playwright  # a test extra; the browser is Debian's
    with served_app(tmp_path) as (base, services):
        with transaction(services.session_factory) as session:
            account = accounts.create_account(session, "browser", plan="plus", credits=1000)
            members.create_member(session, account.id, EMAIL, PASSWORD)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                 args=CHROMIUM_ARGS)
            try:
                context = browser.new_context()
                context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
                page = context.new_page()
                page.set_default_timeout(15_000)

                page.goto(f"{base}/dashboard/keys")
                assert "/dashboard/login" in page.url  # signed out: sent to sign in
                page.fill("input[name=email]", EMAIL)
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/dashboard/keys")

                page.fill("#create-key input[name=name]", "browser key")
                page.fill("#create-key input[name=monthly_budget]", "500")
                page.click("#create-key-button")
                secret = page.text_content("#new-key-secret").strip()
                key_id = page.get_attribute("#new-key-secret", "data-key-id")
                assert secret.startswith("wx_live_")
                page.click("#copy-secret")
                assert page.evaluate("navigator.clipboard.readText()") == secret

                headers = {"Authorization": f"Bearer {secret}"}
                allowed = httpx.get(f"{base}/api/v1/credits", headers=headers)
                assert allowed.status_code == 200, allowed.text
                assert allowed.json()["credits"]["balance"] == 1000
                assert allowed.json()["credits"]["key"]["monthly"]["limit"] == 500

                page.click(f"#key-{key_id} button[data-action=revoke]")
                page.wait_for_selector(f"#key-{key_id}[data-status=revoked]")
                assert secret not in page.content()
                refused = httpx.get(f"{base}/api/v1/credits", headers=headers)
                assert refused.status_code == 403
                assert refused.json()["error"]["code"] == "forbidden"

                page.click("a[href='/dashboard/generations']")
                page.fill("#playground textarea[name=prompt]", "a green cube")
                page.click("#start-job")
                job = page.locator("li.job.started")
                assert job.get_attribute("data-status") == "pending"
                finish_oldest_job(services)  # the page polls the status endpoint meanwhile
                page.wait_for_selector("li.job.started[data-status=completed] .thumbs img")
                assert job.locator("[data-role=status]").text_content() == "completed"
                thumbnail = job.locator(".thumbs img").get_attribute("src")
                assert thumbnail.startswith(f"{base}/files/outputs/")
                page.wait_for_function(  # the real output loaded: 24 px wide
                    "document.querySelector('li.job.started .thumbs img').naturalWidth === 24")
            finally:
                browser.close()
