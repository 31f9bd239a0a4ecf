"""The `retouch` command line. Each command imports its implementation lazily so `--help` is fast."""

from __future__ import annotations

from pathlib import Path

import typer

from retouch.serving.operator_cli import accounts_app, keys_app, members_app  # typer only

app = typer.Typer(help="retouch: self-hosted image generation worker", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
app.add_typer(members_app, name="members")


@app.command()
def serve(
    host: str = typer.Option(None, help="interface to listen on (default 127.0.0.1)"),
    port: int = typer.Option(None, help="HTTP port (default 8000)"),
    home: Path = typer.Option(None, help="data folder: database, files, models (RETOUCH_HOME)"),
    profile: str = typer.Option(None, help="model profile: tiny | sdxl | sdxl-random"),
    device: str = typer.Option(None, help="cpu | cuda"),
    allow_private_urls: bool = typer.Option(
        None, "--allow-private-urls/--no-allow-private-urls",
        help="let image URLs point at private/loopback hosts (RETOUCH_ALLOW_PRIVATE_URLS=1)"),
    executor: str = typer.Option(None, help="ray | inprocess"),
    serve_config: Path = typer.Option(
        None, "--serve-config", exists=True, dir_okay=False,
        help="Ray Serve config file (Ray's schema; RETOUCH_SERVE_CONFIG); default: one CPU "
             "replica per model family"),
    migrate: bool = typer.Option(
        None, "--migrate/--no-migrate",
        help="migrate the database before serving (default); --no-migrate where "
             "`retouch db upgrade` runs once for all API pods (RETOUCH_MIGRATE_ON_START=0)"),
    drain_seconds: float = typer.Option(
        None, "--drain-seconds",
        help="on SIGTERM, how long running jobs may finish before the rest are put back to "
             "pending (RETOUCH_DRAIN_SECONDS; default 30)"),
) -> None:
    """Run the worker: models, Ray Serve deployments, the dispatcher and the HTTP API."""
    from retouch.serving.server import serve_forever
    from retouch.serving.settings import Settings

    given = {"host": host, "port": port, "home": home, "profile": profile, "device": device,
             "allow_private_urls": allow_private_urls, "executor": executor,
             "serve_config": serve_config, "migrate_on_start": migrate,
             "drain_seconds": drain_seconds}
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    raise typer.Exit(serve_forever(settings))  # serve_forever leaves the process itself


@app.command()
def batch(
    manifest: Path = typer.Argument(..., exists=True, dir_okay=False,
                                    help="JSONL file: one generations body per line"),
    out: Path = typer.Option(..., "--out", help="folder for outputs and results.jsonl"),
    profile: str = typer.Option("tiny", help="model profile: tiny | sdxl | sdxl-random"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    model_cache: Path = typer.Option(None, help="model cache folder (default ~/.retouch/models)"),
) -> None:
    """Run a manifest of generation jobs through the pipelines, without the HTTP API."""
    from retouch.scripts.batch import batch_command

    raise typer.Exit(batch_command(manifest, out, profile=profile, device=device,
                                   model_cache=model_cache))


@app.command("build-tiny")
def build_tiny(
    cache: Path = typer.Option(None, help="model cache folder (default <RETOUCH_HOME>/models)"),
    force: bool = typer.Option(False, "--force", help="rebuild even if the cache is current"),
) -> None:
    """Build the tiny CPU model twins (deterministic, offline) into the model cache."""
    import time

    from retouch.models.tiny import build_tiny_models
    from retouch.serving.settings import Settings

    started = time.perf_counter()
    root = build_tiny_models(cache or Settings().resolved_model_cache, force=force)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    typer.echo(f"tiny models at {root} ({size / 2**20:.1f} MiB, "
               f"{time.perf_counter() - started:.1f} s)")


@app.command("fetch-models")
def fetch_models_command(
    profile: str = typer.Option("sdxl", help="model profile to fetch"),
    cache: Path = typer.Option(None, help="model cache folder (default <RETOUCH_HOME>/models)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be downloaded"),
) -> None:
    """Download a profile's checkpoints (Hugging Face cache + Real-ESRGAN .pth files)."""
    from retouch.models.fetch import fetch_models, fetch_plan
    from retouch.models.registry import resolve_profile
    from retouch.serving.settings import Settings

    settings = Settings()
    resolved = resolve_profile(profile, settings.model_overrides)
    cache_dir = cache or settings.resolved_model_cache

    def describe(item) -> None:
        where = item.target or "Hugging Face cache"
        typer.echo(f"{', '.join(item.spec_names)}: {item.source} -> {where}")

    if dry_run:
        for item in fetch_plan(resolved, cache_dir):
            describe(item)
        return
    fetch_models(resolved, cache_dir, on_item=describe)


db_app = typer.Typer(help="Database schema: migrations, run apart from serving.",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    home: Path = typer.Option(None, help="data folder holding the SQLite database (RETOUCH_HOME)"),
    revision: str = typer.Option("head", help="the Alembic revision to upgrade to"),
) -> None:
    """Migrate the database (RETOUCH_DATABASE_URL) to the newest schema, then exit.

    Run it once per release (a Kubernetes Job) before API pods that serve with --no-migrate.
    Concurrent runs on PostgreSQL wait for each other on an advisory lock."""
    from retouch.serving.core.db import current_revision, run_migrations
    from retouch.serving.settings import Settings

    settings = Settings(home=home) if home is not None else Settings()
    url = settings.resolved_database_url
    before = current_revision(url)
    run_migrations(url, revision)
    typer.echo(f"database at revision {current_revision(url)} (was {before or 'empty'})")


@db_app.command("current")
def db_current(
    home: Path = typer.Option(None, help="data folder holding the SQLite database (RETOUCH_HOME)"),
) -> None:
    """Print the database's schema revision and whether it is the newest."""
    from retouch.serving.core.db import current_revision, head_revision
    from retouch.serving.settings import Settings

    settings = Settings(home=home) if home is not None else Settings()
    current, head = current_revision(settings.resolved_database_url), head_revision()
    typer.echo(f"{current or 'empty'} ({'up to date' if current == head else f'head is {head}'})")
    raise typer.Exit(0 if current == head else 1)


def main() -> None:
    app()
