"""The ops/ scripts work from any checkout, and a service that cannot start leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.ports import free_port


def private_checkout(root: Path, *services: str) -> Path:
    """A copy of ops/services and ops/<service> under a fresh mode-0700 folder (like root's home)."""
    private = root / "private"
    private.mkdir(mode=0o700)
    ops = private / "rig" / "ops"
    ops.mkdir(parents=True)
    shutil.copy2(REPO / "ops" / "services", ops / "services")
    for service in services:
        shutil.copytree(REPO / "ops" / service, ops / service, ignore=shutil.ignore_patterns("state"))
    return ops


def run(*command: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], env=env, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture
def clean_env() -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIG_POSTGRES_")}
    yield env


@pytest.mark.integration
def test_postgres_up_query_down_from_a_private_folder(tmp_path: Path, clean_env: dict[str, str]) -> None:
    import psycopg

    ops = private_checkout(tmp_path, "postgres")
    port = free_port()
    env = {**clean_env, "RIG_POSTGRES_PORT": str(port)}
    try:
        up = run(ops / "postgres" / "up", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"postgresql+psycopg://rig:rig@127.0.0.1:{port}/rig" in up.stdout
        if os.geteuid() == 0:  # the server runs as `postgres`, which cannot enter the 0700 folder
            assert "its state is in" in up.stdout, up.stdout
            assert not (ops / "postgres" / "state" / "data").exists()
        with psycopg.connect(f"postgresql://rig:rig@127.0.0.1:{port}/rig", connect_timeout=10) as connection:
            assert connection.execute("SELECT 40 + 2").fetchone() == (42,)

        again = run(ops / "postgres" / "up", env=env)
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr

        down = run(ops / "postgres" / "down", env=env)
        assert down.returncode == 0 and "postgres: stopped" in down.stdout, down.stdout + down.stderr
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"postgresql://rig:rig@127.0.0.1:{port}/rig", connect_timeout=3)
    finally:
        purge = run(ops / "postgres" / "down", "--purge", env=env)
    assert "data purged" in purge.stdout, purge.stdout + purge.stderr


@pytest.mark.integration
def test_a_service_that_cannot_start_stops_what_the_same_call_started(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    ops = private_checkout(tmp_path, "redis", "postgres")
    redis_port = free_port()
    with socket.socket() as squatter:  # something else holds PostgreSQL's port
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        env = {
            **clean_env,
            "RIG_REDIS_PORT": str(redis_port),
            "RIG_POSTGRES_PORT": str(squatter.getsockname()[1]),
        }
        try:
            result = run(ops / "services", "up", "redis", "postgres", env=env)
            redis_left_running = answers_ping(redis_port)
        finally:
            run(ops / "postgres" / "down", "--purge", env=env)
            run(ops / "redis" / "down", env=env)

    message = result.stdout + result.stderr
    assert result.returncode != 0, message
    assert "redis: ready" in result.stdout, message
    assert "services: postgres did not start" in result.stderr, message
    assert "stopped again what this command started: redis." in result.stderr, message
    assert "make services-down" in result.stderr, message
    assert not redis_left_running


def answers_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=2).ping())
    except redis.ConnectionError:
        return False
