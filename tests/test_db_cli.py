"""`retouch db upgrade` / `retouch db current` migrate apart from serving, and `retouch serve
--no-migrate` leaves the schema alone, so N API pods never race on migrations."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import inspect
from typer.testing import CliRunner

from retouch.scripts.cli import app
from retouch.serving.core.db import current_revision, head_revision, make_engine


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.delenv("RETOUCH_DATABASE_URL", raising=False)
    return CliRunner()


def test_db_upgrade_migrates_once_and_current_reports_it(runner, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home / 'retouch.db'}"
    before = runner.invoke(app, ["db", "current", "--home", str(home)])
    assert before.exit_code == 1 and f"head is {head_revision()}" in before.stdout

    upgraded = runner.invoke(app, ["db", "upgrade", "--home", str(home)])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"database at revision {head_revision()} (was empty)" in upgraded.stdout
    assert current_revision(url) == head_revision()
    assert "generations" in inspect(make_engine(url)).get_table_names()

    again = runner.invoke(app, ["db", "upgrade", "--home", str(home)])
    assert f"(was {head_revision()})" in again.stdout
    current = runner.invoke(app, ["db", "current", "--home", str(home)])
    assert current.exit_code == 0 and "up to date" in current.stdout


def test_serve_no_migrate_reaches_the_settings(runner, tmp_path, monkeypatch):
    from retouch.serving import server

    seen = []
    monkeypatch.setattr(server, "serve_forever", lambda settings: seen.append(settings) or 0)
    config = tmp_path / "serve.yaml"
    config.write_text("applications: []\n")
    result = runner.invoke(app, ["serve", "--home", str(tmp_path), "--no-migrate",
                                 "--serve-config", str(config)])
    assert result.exit_code == 0, result.output
    assert seen[0].migrate_on_start is False and seen[0].serve_config == config
    runner.invoke(app, ["serve", "--home", str(tmp_path)])
    assert seen[1].migrate_on_start is True and seen[1].serve_config is None


@pytest.mark.skipif(not os.environ.get("RETOUCH_TEST_POSTGRES_URL"),
                    reason="needs RETOUCH_TEST_POSTGRES_URL")
def test_concurrent_upgrades_on_postgres_wait_for_each_other():
    from db_fixtures import postgres_schema

    with postgres_schema("migrate_race") as url:
        # Three "pods" migrating one empty database at once.
        pods = [subprocess.Popen([sys.executable, "-c", MIGRATE, url], stderr=subprocess.PIPE,
                                 text=True) for _ in range(3)]
        try:
            errors = [pod.communicate(timeout=60)[1] for pod in pods]
        finally:
            for pod in pods:
                pod.kill()
                pod.wait()
        assert [pod.returncode for pod in pods] == [0, 0, 0], errors
        assert current_revision(url) == head_revision()


MIGRATE = "import sys; from retouch.serving.core.db import run_migrations; run_migrations(sys.argv[1])"
