"""Latency histograms: the wire layout both the agent and the hub use (docs/protocol.md).

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
from typing import Any, Final

SUB_BUCKET_BITS: Final = 3  # 2**3 = 8 sub-buckets per power of two
LINEAR_LIMIT: Final = 2 << SUB_BUCKET_BITS  # 16: values below this get a bucket each
MAX_SHIFT: Final = 44  # values up to 2**48 ns get their own bucket
N_BUCKETS: Final = (MAX_SHIFT << SUB_BUCKET_BITS) + LINEAR_LIMIT  # 368: top of shift 44 is 367
LAST_BUCKET: Final = N_BUCKETS - 1


def bucket_of(ns: int) -> int:
    """The bucket index of a latency in nanoseconds (integer bit operations only)."""
    if ns < LINEAR_LIMIT:
        return ns if ns > 0 else 0
    s = ns.bit_length() - (SUB_BUCKET_BITS + 1)  # keep the top 4 bits: 1 + sub-bucket
    return (s << SUB_BUCKET_BITS) + (ns >> s) if s <= MAX_SHIFT else LAST_BUCKET


def bucket_bounds(index: int) -> tuple[int, int]:
    """``[low, high)`` in nanoseconds of a bucket."""
    if not 0 <= index < N_BUCKETS:
        raise ValueError(f"bucket {index} out of 0..{N_BUCKETS - 1}")
    if index < LINEAR_LIMIT:
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
        if ns < LINEAR_LIMIT:
            ns = ns if ns > 0 else 0
        else:
            s = ns.bit_length() - 4  # 4 = SUB_BUCKET_BITS + 1, as in bucket_of
            ns = (s << SUB_BUCKET_BITS) + (ns >> s) if s <= MAX_SHIFT else LAST_BUCKET
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
