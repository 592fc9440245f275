"""The same schema and data work on PostgreSQL through DATABASE_URL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.procs import ROOT, child_env

PG = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_database() -> str:
    try:
        admin = psycopg.connect(PG, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG}: {exc}")
    name = f"echo_test_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    yield PG.rsplit("/", 1)[0] + "/" + name
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


def test_migrate_and_load_avatars_on_postgres(postgres_database: str) -> None:
    env = child_env(DATABASE_URL=postgres_database)
    for command in (["migrate", "--noinput", "-v0"], ["load_avatars"]):
        result = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    with psycopg.connect(postgres_database) as conn:
        slugs = [row[0] for row in conn.execute("SELECT slug FROM avatars_avatar ORDER BY slug")]
    assert slugs == ["aria", "astra", "lin"]
