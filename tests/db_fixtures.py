"""Database fixtures for the serving-core tests: each test module runs on SQLite, and on
PostgreSQL too when RETOUCH_TEST_POSTGRES_URL is set (in a throwaway schema of its own).

The fixtures (`database_url`, `db_engine`, `sf`) reach every test module through `conftest.py`'s
`pytest_plugins`; `empty_session_factory`, `BACKENDS` and `postgres_schema` are plain helpers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import delete, text

from retouch.serving.core.db import make_engine, make_session_factory, run_migrations
from retouch.serving.core.tables import Base

BACKENDS = ["sqlite"] + (["postgres"] if os.environ.get("RETOUCH_TEST_POSTGRES_URL") else [])


@contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A database URL on a fresh schema of the test PostgreSQL; the schema is dropped after."""
    base = os.environ["RETOUCH_TEST_POSTGRES_URL"]
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(request, tmp_path_factory):
    name = request.module.__name__.rsplit(".", 1)[-1]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp(name)}/store.db"
        return
    with postgres_schema(name) as url:
        yield url


@pytest.fixture(scope="module")
def db_engine(database_url):
    """A migrated database (a SQLAlchemy engine); PostgreSQL gets a pool wide enough for the
    concurrency tests."""
    run_migrations(database_url)
    engine = make_engine(database_url, **({} if database_url.startswith("sqlite")
                                          else {"pool_size": 32}))
    yield engine
    engine.dispose()


def empty_session_factory(engine):
    """A session factory on `engine` after every table has been emptied."""
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
    return make_session_factory(engine)


@pytest.fixture
def sf(db_engine):
    """A session factory on an empty database."""
    return empty_session_factory(db_engine)
