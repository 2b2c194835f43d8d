"""Telemetry retention: downsample old windows into coarser rows, delete the oldest.

Raw windows older than ``raw_age_s`` are folded, per device and per ``resolution_s``
bucket (hourly by default), into one row of the same ``Telemetry`` table: sums of the
counts, the merged latency histogram (percentiles read from it), the mean CPU, the
maximum RSS (hub/telemetry/queries.py ``WindowSum``). Its seq is ``-1 - bucket``, so a later run
finds it and merges the bucket's late windows into it. Rows (raw or folded) whose window
ended more than ``max_age_s`` ago are deleted, and so are drift windows (hub/telemetry/drift.py:
alerts only look at the last few minutes; the drift report over a range merges what is
left).

Idempotent: a second run over the same data changes nothing, and the totals a query
sees (counts, errors, labels, the histogram) are the same before and after folding.
The ingest refuses windows older than ``raw_age_s`` (hub/ingest/writer.py), so a replay of a
window that was already folded can never be counted twice.

Runs from the hub's maintenance thread (hub/app.py) and ``edgefleet`` has no command
of its own for it yet: ``python -m hub.telemetry.retention DB_PATH`` runs one pass.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Engine, delete
from sqlmodel import col, select

from hub.store.tables import DriftWindow, Telemetry, session
from hub.telemetry.queries import merge_by_bucket

log = logging.getLogger(__name__)

RAW_AGE_S: Final = 7 * 86400.0  # seconds raw windows are kept as they came
MAX_AGE_S: Final = 90 * 86400.0  # seconds any telemetry is kept
RESOLUTION_S: Final = 3600.0  # seconds per downsampled row
DEVICES_PER_TRANSACTION: Final = 200  # devices folded per commit (keeps writes short)


@dataclass(frozen=True)
class RetentionPolicy:
    raw_age_s: float = RAW_AGE_S
    max_age_s: float = MAX_AGE_S
    resolution_s: float = RESOLUTION_S

    def __post_init__(self) -> None:
        if not 0 < self.raw_age_s <= self.max_age_s or self.resolution_s <= 0:
            raise ValueError(f"need 0 < raw_age_s <= max_age_s and resolution_s > 0: {self}")


@dataclass(frozen=True)
class RetentionResult:
    folded: int  # raw windows folded into downsampled rows
    rows_written: int  # downsampled rows created or updated
    deleted: int  # rows past max_age_s
    drift_deleted: int = 0  # drift windows past max_age_s


def run_retention(
    engine: Engine, policy: RetentionPolicy | None = None, now: float | None = None
) -> RetentionResult:
    """One pass: fold what is older than ``raw_age_s``, delete what is older than
    ``max_age_s``."""
    policy = policy or RetentionPolicy()
    now = time.time() if now is None else now
    folded, written = _downsample(engine, policy, now - policy.raw_age_s)
    oldest = now - policy.max_age_s
    with session(engine) as s:
        result = s.execute(delete(Telemetry).where(col(Telemetry.end) < oldest))
        drift = s.execute(delete(DriftWindow).where(col(DriftWindow.ts) < oldest))
        s.commit()
    deleted = int(result.rowcount)  # type: ignore[attr-defined]
    drift_deleted = int(drift.rowcount)  # type: ignore[attr-defined]
    if folded or deleted or drift_deleted:
        log.info(
            "retention: folded %d windows into %d rows, deleted %d and %d drift windows",
            folded,
            written,
            deleted,
            drift_deleted,
        )
    return RetentionResult(folded, written, deleted, drift_deleted)


def _downsample(engine: Engine, policy: RetentionPolicy, cutoff: float) -> tuple[int, int]:
    with session(engine) as s:
        devices = s.exec(
            select(Telemetry.device_id).where(Telemetry.seq >= 0, Telemetry.end < cutoff).distinct()
        ).all()
    folded = written = 0
    for i in range(0, len(devices), DEVICES_PER_TRANSACTION):
        with session(engine) as s:
            for device in devices[i : i + DEVICES_PER_TRANSACTION]:
                raw = s.exec(
                    select(Telemetry).where(
                        Telemetry.device_id == device, Telemetry.seq >= 0, Telemetry.end < cutoff
                    )
                ).all()
                for bucket, acc in merge_by_bucket(raw, policy.resolution_s).items():
                    seq = -1 - bucket
                    earlier = s.get(Telemetry, (device, seq))
                    if earlier is not None:
                        acc.add(earlier)
                        s.delete(earlier)
                        s.flush()
                    s.add(acc.to_row(device, seq, policy.resolution_s))
                    written += 1
                s.execute(  # the rows just read: the ingest adds none this old (see above)
                    delete(Telemetry).where(
                        col(Telemetry.device_id) == device,
                        col(Telemetry.seq) >= 0,
                        col(Telemetry.end) < cutoff,
                    )
                )
                folded += len(raw)
            s.commit()
    return folded, written


def main(argv: list[str]) -> int:
    """``python -m hub.telemetry.retention DB_PATH [RAW_AGE_S MAX_AGE_S RESOLUTION_S]``."""
    from hub.store.tables import make_engine, sqlite_url

    if not argv or argv[0] in ("-h", "--help"):
        print(main.__doc__)
        return 0 if argv else 2
    from pathlib import Path

    numbers = [float(x) for x in argv[1:4]]
    policy = RetentionPolicy(*numbers)
    result = run_retention(make_engine(sqlite_url(Path(argv[0]))), policy)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
