"""The operator CLI under test: `cli(*args)` runs `retouch ... --home <tmp> --json` and returns
the parsed JSON; `cli.session_factory()` opens the database those commands wrote."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from retouch.scripts.cli import app
from retouch.serving.core.db import make_engine, make_session_factory


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.delenv("RETOUCH_DATABASE_URL", raising=False)
    monkeypatch.setenv("RETOUCH_HOME", str(tmp_path / "env-home"))  # --home must win over it
    home = tmp_path / "home"
    runner = CliRunner()

    def run(*args, ok=True):
        result = runner.invoke(app, [*args, "--home", str(home), "--json"])
        assert (result.exit_code == 0) == ok, result.output
        return json.loads(result.stdout)

    run.session_factory = lambda: make_session_factory(make_engine(
        f"sqlite:///{home / 'retouch.db'}"))
    return run
