"""The timer that has the hub ask again for capture chunks it lacks (ADR 0039).

Every ``period_s`` it runs :meth:`Datasets.resume_uploads` (ask devices for missing
chunks, give up after the bounded asks) and :meth:`Datasets.sweep` (fail what is past its
capture's deadline), so an upload that went quiet is noticed without anyone reading the
capture. Only the leading hub process runs it (hub/app.py ``_lead``): captures come to
the leader's link.
"""

from __future__ import annotations

import logging
import threading
from typing import Final, Protocol

log = logging.getLogger(__name__)

RESUME_PERIOD_S: Final = 1.0  # seconds between two looks at the uploads in progress


class Resumable(Protocol):
    @property
    def quiet_s(self) -> float: ...

    def resume_uploads(self) -> None: ...

    def sweep(self) -> None: ...


class UploadResumer:
    """A daemon thread that looks at the uploads in progress every ``period_s``."""

    def __init__(self, datasets: Resumable, period_s: float = RESUME_PERIOD_S) -> None:
        self.datasets = datasets
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> UploadResumer:
        self._thread = threading.Thread(target=self._run, name="hub-uploads", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        # never slower than half a quiet interval (tests shorten it)
        while not self._stop.wait(min(self.period_s, self.datasets.quiet_s / 2)):
            try:
                self.datasets.resume_uploads()
                self.datasets.sweep()
            except Exception:  # the next look may succeed
                log.exception("hub: resuming capture uploads failed")
