"""What the ingest writer stores: a device's report, and the appliers that store it.

A :class:`Report` is one validated message from a device (hub/transport/inbound.py makes
them). The writer (hub/ingest/writer.py) stages a batch of reports with each
:class:`ReportApplier` in turn, inside one transaction, and commits once (ADR 0010): a
device's state, its events, its telemetry windows and its drift summaries of one batch
land together or not at all. The appliers belong to the domains that own the rows:
hub/fleet/progress.py (states and events), hub/telemetry/windows.py (telemetry) and
hub/telemetry/drift.py (drift summaries).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlmodel import Session

from shared.protocol import Message

REPORT_KINDS: frozenset[str] = frozenset({"state", "events", "telemetry", "drift"})  # stored here


@dataclass(frozen=True)
class Report:
    device_id: str
    kind: str  # state | events | telemetry | drift
    message: Message
    received: float = field(default_factory=time.time)  # the hub's clock
    ack: Any = None  # what the consumer needs to acknowledge it once stored (hub/transport/link.py)


class ReportApplier(Protocol):
    """Stores the reports of the kinds it owns; the writer commits."""

    def apply(self, s: Session, reports: Sequence[Report]) -> Mapping[str, int]:
        """Stage what concerns this applier among ``reports`` in ``s``; never commit.

        Returns the counts to add to the writer's counters once the batch is committed
        (for example duplicates skipped); a batch that is rolled back adds nothing.
        """
        ...

    def committed(self, reports: Sequence[Report]) -> Mapping[str, int]:
        """Work that follows a committed batch (outside its transaction); counts to add.

        Must not raise: a failure is logged and counted by the applier itself.
        """
        ...
