"""Fixtures for tests against the real services started by ops/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rig.config import RigSettings
from sim.deploy import isolated_feast_repo


def require_redis(redis_url: str) -> None:
    """Fail clearly when Redis does not answer."""
    import redis

    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
    except redis.ConnectionError as error:
        pytest.fail(f"no Redis at {redis_url} ({error}); start it with ops/redis/up")


def isolated_feast_settings(root: Path, **overrides: object) -> RigSettings:
    """Settings on a copy of examples/synthetic_world with its own Feast project, so tests share Redis safely.

    The copy's feature_store.yaml names a dead Redis address on purpose: the rig must take Redis
    from `settings.redis_url`, never from the file.
    """
    repo = isolated_feast_repo(root, "rig_test")
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    config["online_store"]["connection_string"] = "127.0.0.1:1"
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
    settings = RigSettings(feast_repo=repo, home=root / "home", **overrides)  # type: ignore[arg-type]
    require_redis(settings.redis_url)
    return settings
