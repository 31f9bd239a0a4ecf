"""The Wixma MCP surface: the Streamable HTTP endpoint `/mcp`, its OAuth 2.1 authorization
server (`/oauth/*`, `/.well-known/*`), and the sign-in and consent pages.

`install_mcp(app)` adds all of it to the FastAPI app built by `build_app` and registers the MCP
session manager's lifespan in `app.state.surface_lifespans`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from urllib.parse import urlparse

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .oauth import (MCP_PATH, BearerVerifier, WixmaOAuthProvider, consent_router, oauth_routes,
                    resource_metadata_url)
from .server import build_mcp_server
from .signin import router as signin_router


class McpTransport:
    """The `/mcp` ASGI endpoint. The SDK's session manager runs for one app lifespan (stateless
    Streamable HTTP: every request stands alone, so any process of the API can answer it)."""

    def __init__(self, server: MCPServer, security: TransportSecuritySettings):
        self.server = server
        self.security = security
        self.manager = None

    @asynccontextmanager
    async def running(self):
        # `streamable_http_app()` makes a fresh session manager (one can run only once).
        self.server.streamable_http_app(streamable_http_path=MCP_PATH, stateless_http=True,
                                        transport_security=self.security)
        manager = self.server.session_manager
        async with manager.run():
            self.manager = manager
            try:
                yield
            finally:
                self.manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.manager is None:
            response = JSONResponse({"error": "the MCP endpoint is starting or stopping"},
                                    status_code=503)
            await response(scope, receive, send)
            return
        await self.manager.handle_request(scope, receive, send)


def transport_security(settings) -> TransportSecuritySettings:
    """DNS-rebinding protection: the public host (and loopback) as Host, same for Origin.

    Without a configured public URL on a non-loopback interface the served host name is not
    known, so Host/Origin are not checked (bearer credentials are still required)."""
    if settings.public_base_url is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    public = urlparse(settings.resolved_public_base_url)
    hosts = [public.netloc, f"{settings.host}:{settings.port}", "127.0.0.1:*", "localhost:*",
             "[::1]:*"]
    origins = [f"{public.scheme}://{public.netloc}", "http://127.0.0.1:*",
               "http://localhost:*", "http://[::1]:*"]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                     allowed_hosts=list(dict.fromkeys(hosts)),
                                     allowed_origins=list(dict.fromkeys(origins)))


def bearer_protected(app: ASGIApp, verifier: BearerVerifier, metadata_url: str) -> ASGIApp:
    """401 with `WWW-Authenticate: Bearer ..., resource_metadata="..."` unless the request
    carries a valid API key or OAuth access token."""
    return AuthenticationMiddleware(
        AuthContextMiddleware(RequireAuthMiddleware(app, [], metadata_url)),
        backend=BearerAuthBackend(verifier))


def install_mcp(app: FastAPI) -> None:
    """Add `/mcp`, the OAuth endpoints and the sign-in/consent pages to `app`."""
    services = app.state.services
    transport = McpTransport(build_mcp_server(services), transport_security(services.settings))
    verifier = BearerVerifier(WixmaOAuthProvider(services))
    app.router.routes.append(
        Route(MCP_PATH, bearer_protected(transport, verifier, resource_metadata_url(services))))
    app.router.routes.extend(oauth_routes(services))
    app.include_router(signin_router)
    app.include_router(consent_router)
    app.state.surface_lifespans.append(transport.running)


__all__ = ["install_mcp", "McpTransport"]
