"""The `retouch` command line. Each command imports its implementation lazily so `--help` is fast."""

from __future__ import annotations

import typer

app = typer.Typer(help="retouch: self-hosted image generation worker", no_args_is_help=True)


def main() -> None:
    app()
