"""Alembic environment: runs on the connection that `run_migrations(url)` hands over."""

from __future__ import annotations

from alembic import context

from retouch.serving.core.tables import Base

config = context.config
target_metadata = Base.metadata


def run_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; use run_migrations(url)")
run_online()
