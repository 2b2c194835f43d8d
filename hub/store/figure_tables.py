"""The fleet's running totals for ``GET /metrics``, kept by whoever stores telemetry.

Each stored telemetry window adds its figures to :class:`ModelFigure` rows, in the same
transaction as the window (hub/telemetry/figures.py), so the totals are exact (a replay
stored once is counted once), survive a restart, and take in what ingest worker
processes store too. A scrape then reads a row per figure, never the windows.
:class:`SpoolDrop` keeps the highest spool-drop count each device reported.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel

from hub.store.data_tables import now

__all__ = ["ModelFigure", "SpoolDrop"]


class ModelFigure(SQLModel, table=True):
    """One running total of one model version, over every window the hub stored.

    ``figure``: inferences | errors | labelled | correct | abs_err_sum | latency_count |
    latency_sum (seconds) | latency_le_<i> (inferences in Prometheus bucket i, not
    cumulative: hub/telemetry/figures.py lists the bounds).
    """

    model: str = Field(primary_key=True, max_length=64)
    version: int = Field(primary_key=True)
    figure: str = Field(primary_key=True, max_length=32)
    value: float = 0.0
    updated_at: float = Field(default_factory=now, index=True)  # the last window added


class SpoolDrop(SQLModel, table=True):
    """The most spool drops a device has reported (its count since it was installed)."""

    device_id: str = Field(primary_key=True, max_length=64)
    dropped: int = 0
    updated_at: float = Field(default_factory=now)
