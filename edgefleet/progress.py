"""A progress line for a hub job: one updating line on a terminal, a line per stage else."""

from __future__ import annotations

import sys
from typing import Any, TextIO

BAR_WIDTH = 30  # characters


class JobProgress:
    """Call with each polled job; prints only when the stage or percent moved."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self._last: tuple[str, int] | None = None

    def __call__(self, job: dict[str, Any]) -> None:
        stage = job.get("stage") or job.get("status") or ""
        pct = round(100 * float(job.get("progress") or 0.0))
        if (stage, pct) == self._last:
            return
        if self.tty:
            filled = BAR_WIDTH * pct // 100
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.out.write(f"\r  [{bar}] {pct:3d}%  {stage:<12}")
            if job.get("status") in ("done", "failed"):
                self.out.write("\n")
        elif self._last is None or self._last[0] != stage or job.get("status") == "done":
            self.out.write(f"  {stage} {pct}%\n")
        self.out.flush()
        self._last = (stage, pct)
