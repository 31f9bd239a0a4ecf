"""Alembic migrations for the job store, run in code by `retouch.serving.core.db.run_migrations`."""
