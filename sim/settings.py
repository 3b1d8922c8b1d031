"""The synthetic world's size and seed, read from `RIG_WORLD_<FIELD>` like the rig's own settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sim.world import World, make_world


class WorldSettings(BaseSettings):
    """Which synthetic world to build: the same values give the same entities, requests and labels."""

    model_config = SettingsConfigDict(env_prefix="RIG_WORLD_", extra="ignore")

    seed: int = 7
    """Seed of the world: entities, their feature history and the requests drawn from it."""

    entities: int = Field(default=2_000, ge=10)
    """Number of entities (accounts)."""

    days: int = Field(default=14, ge=2)
    """Days of daily feature snapshots."""

    def make(self) -> World:
        """The world these settings describe."""
        return make_world(self.seed, self.entities, self.days)
