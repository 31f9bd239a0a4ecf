"""SSRF-safe image fetching for URL image references.

Each hop: only `https` (plus `http` when private URLs are allowed), the host is resolved once and
every address must be public (no private, loopback, link-local, multicast, reserved or shared
ranges) unless `allow_private_urls`; the connection goes to the vetted address (TLS still checks
the certificate for the original host name). Redirects are followed by hand, at most 3, each hop
vetted again. The body is streamed with a 50 MB cap and an overall time cap, then validated as a
PNG/JPEG/WEBP image. Every failure is `InvalidInput` naming the request field.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from retouch.serving.core.errors import InvalidInput
from retouch.pipelines.vocabulary import IMAGE_MEDIA_TYPES, MAX_IMAGE_BYTES

from .image_refs import ValidatedImage, validate_image_bytes

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
Resolver = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """All addresses the system resolver gives for `host` (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local
                                 or ip.is_loopback or ip.is_private or ip.is_unspecified)


@dataclass(frozen=True)
class FetchedImage:
    image: ValidatedImage
    final_url: str


class ImageFetcher:
    def __init__(self, *, allow_private_urls: bool = False, max_bytes: int = MAX_IMAGE_BYTES,
                 timeout_s: float = 15.0, max_redirects: int = 3,
                 resolver: Resolver = resolve_host, transport: httpx.BaseTransport | None = None):
        self.allow_private_urls = allow_private_urls
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self.resolver = resolver
        self.transport = transport

    def fetch(self, url: str, field: str) -> FetchedImage:
        data, final_url = self.fetch_bytes(url, field)
        return FetchedImage(validate_image_bytes(data, field), final_url)

    def fetch_bytes(self, url: str, field: str,
                    accept: str = ",".join(IMAGE_MEDIA_TYPES.values())) -> tuple[bytes, str]:
        """The body behind `url` (capped, redirects vetted hop by hop) and the final URL; the
        caller validates what it is (images above, music tracks for videos)."""
        deadline = time.monotonic() + self.timeout_s
        current = self._parse(url, field)
        with httpx.Client(transport=self.transport, timeout=self.timeout_s,
                          follow_redirects=False, trust_env=False) as client:
            for hop in range(self.max_redirects + 1):
                address = self._vetted_address(current, field)
                response = self._open(client, current, address, field, headers={
                    "Accept": accept, "User-Agent": "retouch-fetcher/1"})
                try:
                    if response.status_code in REDIRECT_STATUSES:
                        location = response.headers.get("location")
                        if not location:
                            raise InvalidInput(field, "the image URL redirected without a "
                                                      "Location")
                        current = self._parse(str(current.join(location)), field)
                        continue
                    if response.status_code != 200:
                        raise InvalidInput(field, f"the image URL answered HTTP "
                                                  f"{response.status_code}")
                    data = self._read_capped(response, field, deadline)
                finally:
                    response.close()
                return data, str(current)
        raise InvalidInput(field, f"the image URL redirected more than {self.max_redirects} "
                                  "times")

    def vet_url(self, url: str, field: str) -> tuple[httpx.URL, str]:
        """`(parsed URL, vetted address)` under the image URL rules, or `InvalidInput(field)`.
        Webhook URLs are checked with this when given and again before each delivery."""
        parsed = self._parse(url, field)
        return parsed, self._vetted_address(parsed, field)

    def send_vetted(self, client: httpx.Client, method: str, vetted: tuple[httpx.URL, str],
                    field: str, *, headers: dict[str, str],
                    content: bytes | None = None) -> httpx.Response:
        """One streamed request to a `vet_url` result, pinned to the vetted address (no
        redirects followed); the caller closes the response."""
        parsed, address = vetted
        return self._open(client, parsed, address, field, method=method, headers=headers,
                          content=content)

    # -- one hop ---------------------------------------------------------------------------------
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

    def _vetted_address(self, url: httpx.URL, field: str) -> str:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            ipaddress.ip_address(url.host)
            addresses = [url.host]
        except ValueError:
            try:
                addresses = self.resolver(url.host, port)
            except (OSError, UnicodeError):
                raise InvalidInput(field, f"the image host {url.host!r} could not be "
                                          "resolved") from None
        if not addresses:
            raise InvalidInput(field, f"the image host {url.host!r} could not be resolved")
        if not self.allow_private_urls:
            for address in addresses:
                if not is_public_address(address):
                    raise InvalidInput(field, f"the image URL points to a private or reserved "
                                              f"address ({url.host})")
        return addresses[0]

    def _open(self, client: httpx.Client, url: httpx.URL, address: str, field: str, *,
              method: str = "GET", headers: dict[str, str] | None = None,
              content: bytes | None = None, stream: bool = True) -> httpx.Response:
        host_header = url.host if url.port is None else f"{url.host}:{url.port}"
        pinned = url.copy_with(host=address)
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        request = client.build_request(method, pinned, headers={
            "Host": host_header, **(headers or {})},
            content=content, extensions=extensions)
        try:
            return client.send(request, stream=stream)
        except httpx.TimeoutException:
            raise InvalidInput(field, "the URL timed out") from None
        except httpx.HTTPError as exc:
            raise InvalidInput(field, f"the URL is unreachable ({type(exc).__name__})") from None

    def _read_capped(self, response: httpx.Response, field: str, deadline: float) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise InvalidInput(field, f"the image is larger than {self.max_bytes} bytes")
        chunks, total = [], 0
        try:
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > self.max_bytes:
                    raise InvalidInput(field, f"the image is larger than {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise InvalidInput(field, "the image URL took too long to download")
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise InvalidInput(field, f"the image download failed ({type(exc).__name__})") \
                from None
        return b"".join(chunks)


def make_fetcher(settings) -> ImageFetcher:
    return ImageFetcher(allow_private_urls=settings.allow_private_urls)
