"""What an operator declared in a fleet file (hub/declared/, ``edgefleet apply``): named
rollout policies and each group's desired model version."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from hub.store.data_tables import now

__all__ = ["DeclaredGroup", "RolloutPolicy"]


class RolloutPolicy(SQLModel, table=True):
    """A named rollout policy: the how of a rollout (canary, waves, rate, gate)."""

    name: str = Field(primary_key=True, max_length=64)
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    updated_at: float = Field(default_factory=now)
    updated_by: str | None = None


class DeclaredGroup(SQLModel, table=True):
    """A group (a device tag) as declared: the model version it should run, and how to
    roll a new one out to it."""

    tag: str = Field(primary_key=True, max_length=64)
    model: str | None = Field(default=None, max_length=64)
    version: int | None = None
    policy: str | None = Field(default=None, max_length=64)
    updated_at: float = Field(default_factory=now)
    updated_by: str | None = None
