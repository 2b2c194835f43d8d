"""Inference telemetry: what the inference path records, and windows of it (DESIGN §5).

Pure data, no I/O and no clocks: the caller measures latencies (``perf_counter_ns``) and
the agent core closes a window every tick with :meth:`StatsRecorder.drain`, then sends
:meth:`InferenceStats.summary` as the body of a ``telemetry`` message (shared/protocol.py).

Latencies go into a :class:`~shared.latency.LatencyHistogram` (shared: the hub merges
and reads the same layout), whose sparse form also travels in each window.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from shared.bodies import MAX_OTHER_VERSIONS
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
    "MAX_OTHER_VERSIONS",
    "N_BUCKETS",
    "InferenceStats",
    "LabelStats",
    "LatencyHistogram",
    "StatsRecorder",
    "bucket_bounds",
    "bucket_of",
]


VersionKey = tuple[str, int]  # (model, version) that made the predictions


@dataclass(eq=True, slots=True)
class LabelStats:
    """True labels joined to one model version's predictions, in one window.

    A classifier's labels count ``correct``; a regressor's (``regression``) add up the
    absolute and squared errors of its ``value`` instead.
    """

    labelled: int = 0
    correct: int = 0
    abs_err_sum: float = 0.0
    sq_err_sum: float = 0.0
    regression: bool = False

    def merge(self, other: LabelStats) -> None:
        self.labelled += other.labelled
        self.correct += other.correct
        self.abs_err_sum += other.abs_err_sum
        self.sq_err_sum += other.sq_err_sum
        self.regression = self.regression or other.regression

    def copy(self) -> LabelStats:
        return LabelStats(
            self.labelled, self.correct, self.abs_err_sum, self.sq_err_sum, self.regression
        )

    def fields(self) -> dict[str, Any]:
        """As telemetry body fields: ``labelled`` and ``correct``, or ``labelled`` and the
        two error sums (a regressor's ``correct`` is 0)."""
        if self.regression:
            return {
                "labelled": self.labelled,
                "correct": 0,
                "abs_err_sum": self.abs_err_sum,
                "sq_err_sum": self.sq_err_sum,
            }
        return {"labelled": self.labelled, "correct": self.correct}


@dataclass(eq=True, slots=True)
class InferenceStats:
    """The counters of one telemetry window.

    Attributes:
        count: predict calls (each a row or a batch), failed ones included.
        errors: calls that raised.
        nonfinite: calls whose float outputs held a NaN or an infinity.
        rows: rows inferred by the calls that succeeded.
        labelled: rows whose true label was reported without naming the model version
            (:meth:`StatsRecorder.record_labels` alone); counted for the window's model.
        correct: of those, rows whose predicted label was right.
        latency: per-call latency of the calls that succeeded.
        versions: labels joined to the predictions of each model version (late labels
            may name a version that is no longer active).
    """

    count: int = 0
    errors: int = 0
    nonfinite: int = 0
    rows: int = 0
    labelled: int = 0
    correct: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    versions: dict[VersionKey, LabelStats] = field(default_factory=dict)

    def merge(self, other: InferenceStats) -> None:
        """Add ``other`` into this window."""
        self.count += other.count
        self.errors += other.errors
        self.nonfinite += other.nonfinite
        self.rows += other.rows
        self.labelled += other.labelled
        self.correct += other.correct
        self.latency.merge(other.latency)
        for key, stats in other.versions.items():
            mine = self.versions.get(key)
            if mine is None:
                self.versions[key] = stats.copy()
            else:
                mine.merge(stats)

    def summary(self, model: str | None = None, version: int | None = None) -> dict[str, Any]:
        """The window's fields of a ``telemetry`` message body.

        ``count, errors, latency_us {p50, p95, p99}, latency_hist, labelled, correct`` are
        the protocol's fields; ``nonfinite`` and ``rows`` ride along (receivers ignore
        unknown fields). Labels are reported for the window's ``model`` ``version`` (the
        active one) at the top level, with ``abs_err_sum`` and ``sq_err_sum`` for a
        regressor; labels of other versions go in ``other_versions`` (at most
        MAX_OTHER_VERSIONS, those with the most labels).
        """
        h = self.latency
        own = LabelStats(self.labelled, self.correct)
        others: list[tuple[VersionKey, LabelStats]] = []
        for key, stats in self.versions.items():
            if key == (model, version):
                own.merge(stats)
            else:
                others.append((key, stats))
        body = {
            "count": self.count,
            "errors": self.errors,
            "latency_us": {
                "p50": round(h.percentile(50), 3),
                "p95": round(h.percentile(95), 3),
                "p99": round(h.percentile(99), 3),
            },
            **own.fields(),
            "nonfinite": self.nonfinite,
            "rows": self.rows,
            # the sparse histogram itself: the hub merges windows exactly with it
            "latency_hist": h.to_dict(),
        }
        if others:
            others.sort(key=lambda kv: (-kv[1].labelled, kv[0]))
            body["other_versions"] = [
                {"model": m, "version": v, **stats.fields()}
                for (m, v), stats in others[:MAX_OTHER_VERSIONS]
            ]
        return body


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
    (no-GIL) build would need a lock here. Labels, off the hot path and arriving from
    any thread at any time, do take a lock (shared with :meth:`drain`): none is lost.
    """

    __slots__ = ("_labels_lock", "_stats")

    def __init__(self) -> None:
        self._stats = InferenceStats()
        # Labels come from the application's threads (late labels at any time) and must
        # not be lost across a drain: their path and drain() take this lock; the hot
        # path (record) does not.
        self._labels_lock = threading.Lock()

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

    def record_labels(
        self, labelled: int, correct: int, *, model: str | None = None, version: int | None = None
    ) -> None:
        """Rows whose true label became known, and how many the model got right.

        Args:
            model / version: the model version that made the predictions; without them
                the labels count for the model active when the window closes.

        Raises:
            ValueError: ``correct`` is not within ``0..labelled``.
        """
        if not 0 <= correct <= labelled:
            raise ValueError(f"correct={correct} must be within 0..labelled={labelled}")
        with self._labels_lock:
            s = self._stats
            if model is None or version is None:
                s.labelled += labelled
                s.correct += correct
                return
            stats = s.versions.setdefault((model, version), LabelStats())
            stats.labelled += labelled
            stats.correct += correct

    def record_errors(
        self, model: str, version: int, labelled: int, abs_err_sum: float, sq_err_sum: float
    ) -> None:
        """A regressor's rows whose true value became known, with the sums of the absolute
        and squared errors of the predicted values.

        Raises:
            ValueError: a negative count or sum, or a sum that is not finite.
        """
        if labelled < 0 or not (0 <= abs_err_sum < math.inf and 0 <= sq_err_sum < math.inf):
            raise ValueError(f"bad error sums: {labelled}, {abs_err_sum}, {sq_err_sum}")
        with self._labels_lock:
            stats = self._stats.versions.setdefault((model, version), LabelStats())
            stats.regression = True
            stats.labelled += labelled
            stats.abs_err_sum += abs_err_sum
            stats.sq_err_sum += sq_err_sum

    def drain(self) -> InferenceStats:
        """Close the window: return its stats and start a fresh one (one swap: atomic)."""
        with self._labels_lock:
            old, self._stats = self._stats, InferenceStats()
        return old

    def peek(self) -> InferenceStats:
        """A copy of the open window (for probation checks that must not close it)."""
        s = self._stats
        with self._labels_lock:
            versions = {k: v.copy() for k, v in s.versions.items()}
        return InferenceStats(
            s.count,
            s.errors,
            s.nonfinite,
            s.rows,
            s.labelled,
            s.correct,
            s.latency.copy(),
            versions,
        )
