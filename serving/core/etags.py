"""Strong ETags (sha256 of the bytes) and `If-None-Match` (RFC 9110 §13.1.2: weak comparison,
`*`, a comma-separated list), for stored files and the published media list."""

from __future__ import annotations

import hashlib


def etag_of(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags
