"""Database plumbing: engines, sessions, transactions, migrations. SQLite by default, Postgres by URL.

SQLite runs in WAL mode with a busy timeout. Write transactions opened through `transaction()` start
with `BEGIN IMMEDIATE`, so two writers queue on the database lock instead of failing when one of
them tries to upgrade a read snapshot that the other has just made stale. Plain sessions keep
SQLite's deferred `BEGIN`, so reads do not block each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
_IMMEDIATE = "retouch_begin_immediate"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (every stored timestamp is UTC)."""
    return datetime.now(timezone.utc)


def is_sqlite(engine_or_url) -> bool:
    """True when the engine (or URL) points at SQLite."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def _normalise_url(url: str) -> str:
    # A bare `postgresql://` URL would pick psycopg2, which is not installed: use psycopg 3.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, **kwargs) -> Engine:
    """Create an engine: SQLite gets WAL, a busy timeout and cross-thread use; Postgres uses psycopg.

    Statement parameters never appear in SQL logs or error messages (`hide_parameters`): they
    include webhook signing secrets, and errors end up in logs."""
    url = _normalise_url(url)
    kwargs.setdefault("hide_parameters", True)
    if not is_sqlite(url):
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)

    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see `_begin`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        immediate = connection.get_execution_options().get(_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit (they are handed to callers)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One write transaction: commit on success, roll back on any exception.

    On SQLite it begins with `BEGIN IMMEDIATE` (the write lock is taken up front); on Postgres it is
    an ordinary READ COMMITTED transaction whose conditional UPDATEs do the locking.
    """
    session = session_factory()
    try:
        session.connection(execution_options={_IMMEDIATE: True})
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# Any fixed 64-bit key: `retouch db upgrade` runs on PostgreSQL hold it, one at a time.
MIGRATION_LOCK_KEY = 0x7265746F756368  # "retouch"


def _alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def run_migrations(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (`alembic upgrade head`), in code.

    On PostgreSQL the upgrade runs under a transaction-scoped advisory lock, so processes that
    migrate at once wait for each other and the later ones find nothing left to do."""
    from alembic import command
    from sqlalchemy import text

    config = _alembic_config()
    engine = make_engine(url, poolclass=_null_pool())
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": MIGRATION_LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The schema revision the database at `url` is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, poolclass=_null_pool())
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision the migrations define."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool
