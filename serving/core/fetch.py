"""SSRF-safe fetching of URL image references (and music tracks).

Each hop: only `https` (plus `http` when private URLs are allowed), no credentials in the URL;
the host is resolved once (numeric spellings such as `2130706433` or `0x7f.1` are read as the
address they spell) and every address must be public: no private, loopback, link-local,
multicast, reserved, shared or unspecified range, and no IPv6 form that embeds such an IPv4
(mapped, 6to4, NAT64; Teredo and IPv4-compatible addresses are refused outright), unless
`allow_private_urls`. The connection goes to the vetted address (TLS still checks the
certificate for the original host name). Redirects are followed by hand, at most 3, each hop
vetted again. The body is streamed with a 50 MB cap.

Sources: an operator may limit image and music downloads to an allow-list of host patterns
(`allowed_image_hosts`; `source_host_patterns(settings)`), checked on every hop before any
lookup. Webhook URLs are not image sources and are not limited by it.

Time: one deadline per URL covers every hop, connect, read and the whole body (a host that
trickles bytes cannot hold a request past it), and a request's URLs are fetched concurrently,
so a create call with 16 references waits at most one deadline. Every failure is `InvalidInput`
naming the request field.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import re
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from retouch.serving.core.errors import InvalidInput
from retouch.pipelines.vocabulary import IMAGE_MEDIA_TYPES, MAX_IMAGE_BYTES

from .image_refs import ValidatedImage, validate_image_bytes

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
IMAGE_ACCEPT = ",".join(IMAGE_MEDIA_TYPES.values())
USER_AGENT = "retouch-fetcher/1"
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix
_NUMERIC_HOST = re.compile(r"^[0-9a-fA-FxX.]+$")
Resolver = Callable[[str, int], list[str]]

# The Wixma reference's safe HTTPS image sources (besides this server's own uploads and
# generation history): Supabase storage, the Fal and OpenAI CDNs, Cloudinary, Imgix, Unsplash.
# `RETOUCH_ALLOWED_IMAGE_HOSTS=wixma` selects them (with this server's public host).
WIXMA_SOURCE_HOSTS = (
    "*.supabase.co",
    "fal.media", "*.fal.media",
    "oaidalleapiprodscus.blob.core.windows.net", "*.oaiusercontent.com",
    "res.cloudinary.com",
    "*.imgix.net",
    "images.unsplash.com", "plus.unsplash.com",
)
HOST_PRESETS = {"wixma": WIXMA_SOURCE_HOSTS}


def host_matches(host: str, pattern: str) -> bool:
    """`pattern` is a host name (`res.cloudinary.com`) or `*.` and a domain, which matches any
    name under that domain (`*.imgix.net`: `acme.imgix.net`, not `imgix.net`). No case."""
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def source_host_patterns(settings) -> tuple[str, ...] | None:
    """The host patterns image and music URLs must match (presets expanded, this server's own
    public hosts added), or None when every public host is allowed (the default)."""
    if not settings.allowed_image_hosts:
        return None
    patterns: list[str] = []
    for entry in settings.allowed_image_hosts:
        patterns.extend(HOST_PRESETS.get(entry.lower(), (entry,)))
    for base in (settings.resolved_public_base_url, settings.s3_public_base_url):
        if base and (own := httpx.URL(base).host):
            patterns.append(own)
    return tuple(dict.fromkeys(p.lower() for p in patterns))


def resolve_host(host: str, port: int) -> list[str]:
    """All addresses the system resolver gives for `host` (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def literal_address(host: str) -> str | None:
    """The address a host spells, if it is one: IPv4/IPv6 literals and the legacy IPv4 forms
    resolvers accept (`2130706433`, `0x7f000001`, `017700000001`, `127.1`)."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, 6to4 or NAT64 (64:ff9b::/96) address carries."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _is_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local
                                 or ip.is_loopback or ip.is_private or ip.is_unspecified)


def is_public_address(address: str) -> bool:
    """True for a globally reachable unicast address; an IPv6 address embedding an IPv4 one is
    judged by the IPv4 address it reaches (Teredo and IPv4-compatible forms are never public)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return False
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            return _is_public_ip(embedded)
    return _is_public_ip(ip)


@dataclass(frozen=True)
class FetchedImage:
    image: ValidatedImage
    final_url: str


def run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run `coroutine` to completion from synchronous code (a worker thread, as routes and
    tools run in); from inside an event loop it runs on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class ImageFetcher:
    """`transport` replaces the network in tests (`httpx.MockTransport` serves both the
    synchronous webhook client and the asynchronous fetches)."""

    def __init__(self, *, allow_private_urls: bool = False, max_bytes: int = MAX_IMAGE_BYTES,
                 timeout_s: float = 15.0, max_redirects: int = 3,
                 resolver: Resolver = resolve_host, transport: Any = None,
                 allowed_hosts: tuple[str, ...] | None = None):
        self.allow_private_urls = allow_private_urls
        self.allowed_hosts = allowed_hosts  # None: any host (that passes the address rules)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self.resolver = resolver
        self.transport = transport
        # DNS lookups run here, not on the event loop's default executor: `asyncio.run` waits
        # for that one to drain, so a hanging lookup would outlive the deadline.
        self._dns = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="fetch-dns")

    # -- the public calls ------------------------------------------------------------------------
    def fetch(self, url: str, field: str) -> FetchedImage:
        return self.fetch_images({field: url})[field]

    def fetch_images(self, urls: dict[str, str]) -> dict[str, FetchedImage]:
        """Fetch every `field → url` at once and validate each as an image. The first failing
        field, in the given order, is raised."""
        fetched: dict[str, FetchedImage] = {}
        if not urls:
            return fetched
        for field, result in run_coroutine(self._fetch_all(urls, IMAGE_ACCEPT)).items():
            if isinstance(result, BaseException):
                raise result
            data, final_url = result
            fetched[field] = FetchedImage(validate_image_bytes(data, field), final_url)
        return fetched

    def fetch_bytes(self, url: str, field: str, accept: str = IMAGE_ACCEPT) -> tuple[bytes, str]:
        """The body behind `url` (capped, redirects vetted hop by hop) and the final URL; the
        caller validates what it is (music tracks for videos)."""
        result = run_coroutine(self._fetch_all({field: url}, accept))[field]
        if isinstance(result, BaseException):
            raise result
        return result

    def vet_url(self, url: str, field: str) -> tuple[httpx.URL, str]:
        """`(parsed URL, vetted address)` under the image URL rules, or `InvalidInput(field)`.
        Webhook URLs are checked with this when given and again before each delivery."""
        parsed = self._parse(url, field)
        return parsed, self._check_addresses(parsed, self._resolve(parsed, field), field)

    def send_vetted(self, client: httpx.Client, method: str, vetted: tuple[httpx.URL, str],
                    field: str, *, headers: dict[str, str],
                    content: bytes | None = None) -> httpx.Response:
        """One streamed request to a `vet_url` result, pinned to the vetted address (no
        redirects followed); the caller closes the response."""
        parsed, address = vetted
        request = self._pinned_request(client, method, parsed, address, headers, content)
        try:
            return client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_error(field, exc) from None

    # -- concurrent fetching under one deadline ---------------------------------------------------
    async def _fetch_all(self, urls: dict[str, str], accept: str
                         ) -> dict[str, tuple[bytes, str] | BaseException]:
        """`field → (body, final URL)` or the exception that URL ended with; all URLs run at
        once, each under its own deadline."""
        async with httpx.AsyncClient(transport=self.transport, timeout=self.timeout_s,
                                     follow_redirects=False, trust_env=False) as client:
            results = await asyncio.gather(
                *(self._fetch_within_deadline(client, url, field, accept)
                  for field, url in urls.items()), return_exceptions=True)
        return dict(zip(urls, results))

    async def _fetch_within_deadline(self, client: httpx.AsyncClient, url: str, field: str,
                                     accept: str) -> tuple[bytes, str]:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._fetch_one(client, url, field, accept)
        except TimeoutError:
            raise InvalidInput(field, f"the URL did not deliver within {self.timeout_s:g} s "
                                      "(timed out)") from None

    async def _fetch_one(self, client: httpx.AsyncClient, url: str, field: str,
                         accept: str) -> tuple[bytes, str]:
        current = self._parse(url, field)
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        for _ in range(self.max_redirects + 1):
            self._check_source_host(current, field)
            loop = asyncio.get_running_loop()
            addresses = await loop.run_in_executor(self._dns, self._resolve, current, field)
            address = self._check_addresses(current, addresses, field)
            request = self._pinned_request(client, "GET", current, address, headers)
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _transport_error(field, exc) from None
            try:
                if response.status_code in REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise InvalidInput(field, "the URL redirected without a Location")
                    current = self._parse(str(current.join(location)), field)
                    continue
                if response.status_code != 200:
                    raise InvalidInput(field, f"the URL answered HTTP {response.status_code}")
                return await self._read_capped(response, field), str(current)
            finally:
                await response.aclose()
        raise InvalidInput(field, f"the URL redirected more than {self.max_redirects} times")

    async def _read_capped(self, response: httpx.Response, field: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise InvalidInput(field, f"the download is larger than {self.max_bytes} bytes")
        chunks, total = [], 0
        try:
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > self.max_bytes:
                    raise InvalidInput(field, f"the download is larger than {self.max_bytes} "
                                              "bytes")
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise InvalidInput(field, f"the download failed ({type(exc).__name__})") from None
        return b"".join(chunks)

    # -- one hop's checks --------------------------------------------------------------------------
    def _parse(self, url: str, field: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise InvalidInput(field, f"is not a valid URL: {exc}") from None
        allowed = ("https", "http") if self.allow_private_urls else ("https",)
        if parsed.scheme not in allowed:
            raise InvalidInput(field, "must be an https:// URL")
        if not parsed.host:
            raise InvalidInput(field, "the URL has no host")
        if parsed.userinfo:
            raise InvalidInput(field, "URLs with credentials are not accepted")
        return parsed

    def _check_source_host(self, url: httpx.URL, field: str) -> None:
        if self.allowed_hosts is not None and not any(
                host_matches(url.host, pattern) for pattern in self.allowed_hosts):
            raise InvalidInput(field, f"the host {url.host!r} is not an allowed source host; "
                                      "this server downloads only from: "
                                      + ", ".join(self.allowed_hosts))

    def _resolve(self, url: httpx.URL, field: str) -> list[str]:
        literal = literal_address(url.host)
        if literal is not None:
            return [literal]
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = self.resolver(url.host, port)
        except (OSError, UnicodeError):
            addresses = []
        if not addresses:
            raise InvalidInput(field, f"the host {url.host!r} could not be resolved")
        return addresses

    def _check_addresses(self, url: httpx.URL, addresses: list[str], field: str) -> str:
        if not self.allow_private_urls:
            for address in addresses:
                if not is_public_address(address):
                    raise InvalidInput(field, f"the URL points to a private or reserved "
                                              f"address ({url.host})")
        return addresses[0]

    @staticmethod
    def _pinned_request(client: httpx.Client | httpx.AsyncClient, method: str, url: httpx.URL,
                        address: str, headers: dict[str, str],
                        content: bytes | None = None) -> httpx.Request:
        """A request to `url` that connects to `address` (Host header and TLS SNI keep the
        name)."""
        host_header = url.host if url.port is None else f"{url.host}:{url.port}"
        pinned = url.copy_with(host=address)
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        return client.build_request(method, pinned, headers={"Host": host_header, **headers},
                                    content=content, extensions=extensions)


def _transport_error(field: str, exc: httpx.HTTPError) -> InvalidInput:
    if isinstance(exc, httpx.TimeoutException):
        return InvalidInput(field, "the URL timed out")
    return InvalidInput(field, f"the URL is unreachable ({type(exc).__name__})")


def make_fetcher(settings) -> ImageFetcher:
    return ImageFetcher(allow_private_urls=settings.allow_private_urls,
                        timeout_s=settings.fetch_timeout_seconds,
                        allowed_hosts=source_host_patterns(settings))
