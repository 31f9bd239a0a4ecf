"""Shared fixtures. `tiny_store` builds the tiny model twins once per test session (or reuses the
directory named by `RETOUCH_TINY_CACHE`, which keeps repeated local runs fast).

The fixture modules below register their fixtures for every test module (`api`, `cli`,
`database_url`, `db_engine`, `sf`); their plain helpers are imported where they are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["api_fixtures", "cli_fixtures", "db_fixtures"]


@pytest.fixture(scope="session")
def tiny_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("RETOUCH_TINY_CACHE")
    return Path(configured) if configured else tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_store(tiny_cache_dir: Path):
    from retouch.models.store import ModelStore
    from retouch.models.tiny import build_tiny_models

    build_tiny_models(tiny_cache_dir)
    return ModelStore(profile="tiny", device="cpu", cache_dir=tiny_cache_dir)


@pytest.fixture(autouse=True)
def aixpose_response_audit(monkeypatch):
    """Every AIXpose JSON body a test receives is the route's own, its keys all declared by its
    response model (`response_audit`); a test fails at teardown on any finding."""
    import fastapi.routing

    from response_audit import Audit

    audit = Audit()
    monkeypatch.setattr(fastapi.routing, "serialize_response",
                        audit.wrap(fastapi.routing.serialize_response))
    yield audit
    assert not audit.findings, "\n".join(audit.findings[:20])
