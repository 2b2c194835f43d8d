"""The selector loop's timers (simulator/mqttloop.py): one heap, one-shot and periodic.

A periodic timer waits ``interval_s`` plus a uniform random extra in ``[0, jitter_s)``
each time, so timers started together drift apart; a loop that falls behind skips the
missed calls rather than bursting. A cancelled timer stays in the heap until it is due,
unless cancelled ones come to outnumber the live ones (then the heap is rebuilt).
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable

__all__ = ["Timer", "TimerHeap"]

MAX_DEAD_TIMERS = 1024  # cancelled timers tolerated in the heap before a rebuild is considered


class Timer:
    """A scheduled call; :meth:`cancel` stops it (loop thread only)."""

    __slots__ = ("_heap", "cancelled", "fn", "interval_s", "jitter_s", "scheduled")

    def __init__(
        self, heap: TimerHeap, fn: Callable[[], None], interval_s: float | None, jitter_s: float
    ) -> None:
        self._heap = heap
        self.fn = fn
        self.interval_s = interval_s
        self.jitter_s = jitter_s
        self.cancelled = False
        self.scheduled = False

    def cancel(self) -> None:
        """Stop the timer; a no-op if it already fired (one-shot) or was cancelled."""
        if not self.cancelled:
            self.cancelled = True
            if self.scheduled:
                self._heap.cancelled()


class TimerHeap:
    """Timers by due time (monotonic seconds); used on the loop thread only.

    Args:
        rng: draws the jitter of periodic timers (the loop's seeded generator).
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._heap: list[tuple[float, int, Timer]] = []
        self._dead = 0  # cancelled timers still in the heap
        self._seq = itertools.count()

    def once(self, delay_s: float, fn: Callable[[], None]) -> Timer:
        """``fn`` once, ``delay_s`` seconds from now."""
        timer = Timer(self, fn, None, 0.0)
        self._push(time.monotonic() + max(0.0, delay_s), timer)
        return timer

    def every(self, interval_s: float, fn: Callable[[], None], jitter_s: float) -> Timer:
        """``fn`` every ``interval_s`` (+ jitter) seconds until cancelled, the first wait too."""
        timer = Timer(self, fn, interval_s, jitter_s)
        self._push(time.monotonic() + self._period(timer), timer)
        return timer

    def next_due(self) -> float | None:
        """When the earliest timer is due (it may be a cancelled one); None if none."""
        return self._heap[0][0] if self._heap else None

    def run_due(self, now: float, run: Callable[[Callable[[], None]], None]) -> None:
        """Call every timer due by ``now`` through ``run`` (which guards it), reschedule
        the periodic ones."""
        heap = self._heap
        due: list[tuple[float, int, Timer]] = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        for when, _seq, timer in due:
            timer.scheduled = False
            if timer.cancelled:
                self._dead -= 1
                continue
            run(timer.fn)
            if timer.interval_s is not None and not timer.cancelled:
                nxt = when + self._period(timer)
                self._push(nxt if nxt > now else now + timer.interval_s, timer)

    def cancelled(self) -> None:
        """A scheduled timer was cancelled (called by :meth:`Timer.cancel`)."""
        self._dead += 1
        if self._dead > MAX_DEAD_TIMERS and 2 * self._dead > len(self._heap):
            self._heap = [e for e in self._heap if not e[2].cancelled]
            heapq.heapify(self._heap)
            self._dead = 0

    def clear(self) -> None:
        self._heap.clear()

    def _period(self, timer: Timer) -> float:
        assert timer.interval_s is not None
        extra = self._rng.uniform(0.0, timer.jitter_s) if timer.jitter_s else 0.0
        return timer.interval_s + extra

    def _push(self, when: float, timer: Timer) -> None:
        timer.scheduled = True
        heapq.heappush(self._heap, (when, next(self._seq), timer))
