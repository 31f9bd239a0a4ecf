"""The `retouch` command line. Each command imports its implementation lazily so `--help` is fast."""

from __future__ import annotations

import typer

from retouch.serving.operator_cli import accounts_app, keys_app  # typer only; fast

app = typer.Typer(help="retouch: self-hosted image generation worker", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")


def main() -> None:
    app()
