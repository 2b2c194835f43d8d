"""Inference telemetry: what the inference path records, and windows of it (DESIGN §5).

Pure data, no I/O and no clocks: the caller measures latencies (``perf_counter_ns``) and
the agent core closes a window every tick with :meth:`StatsRecorder.drain`, then sends
:meth:`InferenceStats.summary` as the body of a ``telemetry`` message (shared/protocol.py).

Latencies go into a :class:`LatencyHistogram` with log-scale buckets: 8 per power of two,
so any value is within 12.5% of its bucket's lower bound, whatever the scale. Histograms
(and whole windows) merge by adding counts, so the hub can combine windows and devices
exactly; percentiles are computed only when a summary is asked for.

Bucket layout (part of the wire format of :meth:`LatencyHistogram.to_dict`): values below
16 ns have a bucket each (0..15); a value ``v >= 16`` with ``s = v.bit_length() - 4`` goes
to bucket ``8 * s + (v >> s)``, i.e. its top four bits pick one of 8 sub-buckets of its
power of two. Values of 2**48 ns (~78 hours) and more share the last bucket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

SUB_BUCKET_BITS: Final = 3  # 2**3 = 8 sub-buckets per power of two
_LINEAR: Final = 2 << SUB_BUCKET_BITS  # 16: values below this get a bucket each
_MAX_SHIFT: Final = 44  # values up to 2**48 ns get their own bucket
N_BUCKETS: Final = (_MAX_SHIFT << SUB_BUCKET_BITS) + _LINEAR  # 368: top of shift 44 is 367
_LAST: Final = N_BUCKETS - 1


def bucket_of(ns: int) -> int:
    """The bucket index of a latency in nanoseconds (integer bit operations only)."""
    if ns < _LINEAR:
        return ns if ns > 0 else 0
    s = ns.bit_length() - (SUB_BUCKET_BITS + 1)  # keep the top 4 bits: 1 + sub-bucket
    return (s << SUB_BUCKET_BITS) + (ns >> s) if s <= _MAX_SHIFT else _LAST


def bucket_bounds(index: int) -> tuple[int, int]:
    """``[low, high)`` in nanoseconds of a bucket."""
    if not 0 <= index < N_BUCKETS:
        raise ValueError(f"bucket {index} out of 0..{N_BUCKETS - 1}")
    if index < _LINEAR:
        return index, index + 1
    s = (index >> SUB_BUCKET_BITS) - 1
    top = (index & ((1 << SUB_BUCKET_BITS) - 1)) | (1 << SUB_BUCKET_BITS)
    return top << s, (top + 1) << s


class LatencyHistogram:
    """Counts of latencies (nanoseconds) in log-scale buckets; see the module docstring."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts = [0] * N_BUCKETS

    def record(self, ns: int) -> None:
        """Count one latency. Inlined :func:`bucket_of`: this runs on every inference."""
        if ns < _LINEAR:
            ns = ns if ns > 0 else 0
        else:
            s = ns.bit_length() - 4  # 4 = SUB_BUCKET_BITS + 1, as in bucket_of
            ns = (s << SUB_BUCKET_BITS) + (ns >> s) if s <= _MAX_SHIFT else _LAST
        self._counts[ns] += 1

    @property
    def count(self) -> int:
        return sum(self._counts)

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts into this histogram."""
        self._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]

    def copy(self) -> LatencyHistogram:
        out = LatencyHistogram()
        out._counts = list(self._counts)
        return out

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) in microseconds; 0.0 when empty.

        As numpy's default ("linear") method, on estimated order statistics: the k-th
        value is placed evenly inside the bucket that holds it (each bucket's count is
        exact), so the result is within one bucket width (12.5%) of the exact percentile.
        """
        if not 0 <= q <= 100:
            raise ValueError(f"percentile {q} out of 0..100")
        total = sum(self._counts)
        if total == 0:
            return 0.0
        rank = q / 100 * (total - 1)
        below = int(rank)
        low_value = self._order_statistic(below)
        frac = rank - below
        if frac == 0:
            return low_value / 1000
        high_value = self._order_statistic(below + 1)
        return (low_value + frac * (high_value - low_value)) / 1000

    def _order_statistic(self, k: int) -> float:
        """Estimate of the k-th smallest value (0-based), in nanoseconds."""
        seen = 0
        for index, n in enumerate(self._counts):
            if n and k < seen + n:
                low, high = bucket_bounds(index)
                if high - low == 1:
                    return low  # below 16 ns a bucket is one exact value
                return low + (high - low) * (k - seen + 0.5) / n
            seen += n
        raise AssertionError(f"rank {k} beyond the count {seen}")

    def to_dict(self) -> dict[str, int]:
        """Sparse ``{bucket: count}`` (JSON-ready: keys are strings)."""
        return {str(i): n for i, n in enumerate(self._counts) if n}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Mapping[int, Any]) -> LatencyHistogram:
        """Inverse of :meth:`to_dict` (int keys accepted too).

        Raises:
            ValueError: a bucket out of range or a count that is not a non-negative int.
        """
        out = cls()
        for key, n in data.items():
            try:
                index = int(key)
            except (TypeError, ValueError) as e:
                raise ValueError(f"bad bucket {key!r}") from e
            if not 0 <= index < N_BUCKETS:
                raise ValueError(f"bucket {index} out of 0..{N_BUCKETS - 1}")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"bucket {index}: count must be a non-negative int, got {n!r}")
            out._counts[index] += n
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencyHistogram) and self._counts == other._counts

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"LatencyHistogram({self.to_dict()})"


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

        ``count, errors, latency_us {p50, p95, p99}, labelled, correct`` are the protocol's
        fields; ``nonfinite`` and ``rows`` ride along (receivers ignore unknown fields).
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
        if latency_ns < _LINEAR:
            index = latency_ns if latency_ns > 0 else 0
        else:
            shift = latency_ns.bit_length() - 4  # 4 = SUB_BUCKET_BITS + 1, as in bucket_of
            index = (
                (shift << SUB_BUCKET_BITS) + (latency_ns >> shift) if shift <= _MAX_SHIFT else _LAST
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
