"""Inference telemetry: what the inference path records, and windows of it (DESIGN §5).

Pure data, no I/O and no clocks: the caller measures latencies (``perf_counter_ns``) and
the agent core closes a window every tick with :meth:`StatsRecorder.drain`, then sends
:meth:`InferenceStats.summary` as the body of a ``telemetry`` message (shared/protocol.py).

Latencies go into a :class:`~shared.latency.LatencyHistogram` (shared: the hub merges
and reads the same layout), whose sparse form also travels in each window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.latency import (
    LAST_BUCKET,
    LINEAR_LIMIT,
    MAX_SHIFT,
    N_BUCKETS,
    SUB_BUCKET_BITS,
    LatencyHistogram,
    bucket_bounds,
    bucket_of,
)

__all__ = [
    "N_BUCKETS",
    "InferenceStats",
    "LatencyHistogram",
    "StatsRecorder",
    "bucket_bounds",
    "bucket_of",
]


@dataclass(eq=True, slots=True)
class InferenceStats:
    """The counters of one telemetry window.

    Attributes:
        count: predict calls (each a row or a batch), failed ones included.
        errors: calls that raised.
        nonfinite: calls whose float outputs held a NaN or an infinity.
        rows: rows inferred by the calls that succeeded.
        labelled: rows whose true label the application reported.
        correct: of those, rows whose predicted label was right.
        latency: per-call latency of the calls that succeeded.
    """

    count: int = 0
    errors: int = 0
    nonfinite: int = 0
    rows: int = 0
    labelled: int = 0
    correct: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def merge(self, other: InferenceStats) -> None:
        """Add ``other`` into this window."""
        self.count += other.count
        self.errors += other.errors
        self.nonfinite += other.nonfinite
        self.rows += other.rows
        self.labelled += other.labelled
        self.correct += other.correct
        self.latency.merge(other.latency)

    def summary(self) -> dict[str, Any]:
        """The window's fields of a ``telemetry`` message body.

        ``count, errors, latency_us {p50, p95, p99}, latency_hist, labelled, correct`` are
        the protocol's fields; ``nonfinite`` and ``rows`` ride along (receivers ignore
        unknown fields).
        """
        h = self.latency
        return {
            "count": self.count,
            "errors": self.errors,
            "latency_us": {
                "p50": round(h.percentile(50), 3),
                "p95": round(h.percentile(95), 3),
                "p99": round(h.percentile(99), 3),
            },
            "labelled": self.labelled,
            "correct": self.correct,
            "nonfinite": self.nonfinite,
            "rows": self.rows,
            # the sparse histogram itself: the hub merges windows exactly with it
            "latency_hist": h.to_dict(),
        }


class StatsRecorder:
    """Where the inference path records; the agent core drains it once per window.

    Thread-safety without a lock (a lock would cost ~0.13 µs a call, 2% of a one-row
    inference): it relies on CPython's GIL. Each update is one read-modify-write of an
    int attribute or list item (``s.count += 1``), and CPython 3.11+ switches threads
    only at calls and backward jumps, never inside one; :meth:`drain` swaps the window
    with one attribute assignment. Imprecisions, all in telemetry counts only: a call
    that read the window just before a drain adds itself to the drained window (lost if
    that window was already summarised); on CPython 3.10, which may switch threads
    between the read and the write, a rare concurrent update can be lost. A free-threaded
    (no-GIL) build would need a lock here.
    """

    __slots__ = ("_stats",)

    def __init__(self) -> None:
        self._stats = InferenceStats()

    def record(self, latency_ns: int, rows: int, nonfinite: bool) -> None:
        """One successful call. On the hot path: LatencyHistogram.record is inlined."""
        if latency_ns < LINEAR_LIMIT:
            index = latency_ns if latency_ns > 0 else 0
        else:
            shift = latency_ns.bit_length() - 4  # 4 = SUB_BUCKET_BITS + 1, as in bucket_of
            index = (
                (shift << SUB_BUCKET_BITS) + (latency_ns >> shift)
                if shift <= MAX_SHIFT
                else LAST_BUCKET
            )
        s = self._stats
        s.count += 1
        s.rows += rows
        if nonfinite:
            s.nonfinite += 1
        s.latency._counts[index] += 1

    def record_error(self) -> None:
        """One call that raised."""
        s = self._stats
        s.count += 1
        s.errors += 1

    def record_labels(self, labelled: int, correct: int) -> None:
        """Rows whose true label became known, and how many the model got right."""
        if not 0 <= correct <= labelled:
            raise ValueError(f"correct={correct} must be within 0..labelled={labelled}")
        s = self._stats
        s.labelled += labelled
        s.correct += correct

    def drain(self) -> InferenceStats:
        """Close the window: return its stats and start a fresh one (one swap: atomic)."""
        old, self._stats = self._stats, InferenceStats()
        return old

    def peek(self) -> InferenceStats:
        """A copy of the open window (for probation checks that must not close it)."""
        s = self._stats
        return InferenceStats(
            s.count, s.errors, s.nonfinite, s.rows, s.labelled, s.correct, s.latency.copy()
        )
