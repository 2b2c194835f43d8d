"""A hub job's progress as an operator reads it: a Rich progress bar on a terminal, one line
per stage in a log (no repeated percentages), each stage in words, then the build's
figures once it ends (``int8: 12,665 bytes (0.54× fp32), accuracy 0.919 (-0.2 pt): gates
passed``).

The hub names its stages (hub/ml/pipeline.py ``STAGES``, the tuner's ``tune``, the job's
``sign``, a retrain's ``datasets``); :data:`STAGE_WORDS` says each as an operator would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["STAGE_WORDS", "JobProgress", "UploadProgress", "build_figures", "stage_words"]


STAGE_WORDS: dict[str, str] = {
    "datasets": "gathering the datasets",
    "dataset": "reading the dataset",
    "tune": "tuning the settings",
    "train": "training the float32 model",
    "quantize": "quantising to int8",
    "evaluate": "scoring on the hold-out rows",
    "gate": "checking the gates",
    "baseline": "recording the drift reference",
    "golden": "choosing the self-test rows",
    "tflite": "exporting and judging the .tflite for LiteRT classes",
    "sign": "signing and publishing",
}
# Every train job passes these in order (the tuner only when asked): a stage that began
# and ended between two polls is still shown, in its place.
TRAIN_ORDER = ("dataset", "train", "quantize", "evaluate", "gate", "baseline", "golden", "sign")


def stage_words(stage: str) -> str:
    return STAGE_WORDS.get(stage, stage)


class JobProgress:
    """Call with each polled job (``GET /jobs/{id}``); prints only what moved."""

    def __init__(
        self, out: TextIO | None = None, *, prefix: str = "  ", figures: bool = True
    ) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.prefix = prefix
        self.figures = figures
        self._shown: list[str] = []
        self._last: tuple[str, int] | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, job: Mapping[str, Any]) -> None:
        stage = job.get("stage") or ""
        pct = round(100 * float(job.get("progress") or 0.0))
        ended = job.get("status") in ("done", "failed")
        if self.tty:
            self._bar(stage, pct, ended)
        elif stage and stage not in self._shown:
            for missed in self._missed(job.get("kind"), stage):
                self._line(missed)
            self._line(stage)
        if job.get("status") == "done" and self.figures:
            for line in build_figures(job.get("result") or {}):
                self.out.write(f"{self.prefix}{line}\n")
        self.out.flush()
        self._last = (stage, pct)

    def _bar(self, stage: str, pct: int, ended: bool) -> None:
        """The job's bar on a terminal: the percentage and the stage in words."""
        if self._progress is None:
            self._progress, self._task = _rich_bar(self.out, self.prefix)
            self._progress.update(self._task, completed=pct, description=stage_words(stage))
            self._progress.start()  # draws it
        elif (stage, pct) != self._last and self._task is not None:
            self._progress.update(self._task, completed=pct, description=stage_words(stage))
            self._progress.refresh()
        if ended:
            self._progress.stop()
            self._progress = None

    def _missed(self, kind: object, stage: str) -> list[str]:
        if kind != "train" or stage not in TRAIN_ORDER:
            return []
        before = TRAIN_ORDER[: TRAIN_ORDER.index(stage)]
        done = [s for s in self._shown if s in TRAIN_ORDER]
        start = TRAIN_ORDER.index(done[-1]) + 1 if done else 0
        return list(before[start:])

    def _line(self, stage: str) -> None:
        self._shown.append(stage)
        self.out.write(f"{self.prefix}{stage_words(stage)}\n")


def build_figures(result: dict[str, Any]) -> list[str]:
    """A finished build's figures, one line per step: the float32 model, its int8 copy
    beside it, the gates. Nothing for an unevaluated upload."""
    metrics = result.get("metrics") or {}
    fp32, int8 = metrics.get("fp32") or {}, metrics.get("int8") or {}
    if not int8:
        return []
    size32, size8 = fp32.get("size_bytes") or result.get("size_fp32"), int8.get("size_bytes")
    lines = [f"float32: {_bytes(size32)}, {_headline(fp32)}"]
    ratio = f" ({size8 / size32:.2f}× fp32)" if size8 and size32 else ""
    gates = result.get("gates") or []
    failed = [str(g.get("name")) for g in gates if not g.get("passed")]
    verdict = f": gate {', '.join(failed)} FAILED" if failed else ": gates passed" if gates else ""
    lines.append(f"int8: {_bytes(size8)}{ratio}, {_headline(int8, fp32)}{verdict}")
    for runtime, a in (result.get("artefacts") or {}).items():
        if a.get("target") == result.get("target"):
            continue  # the int8 line above
        passed = all(g.get("passed") for g in a.get("gates") or [])
        lines.append(
            f"{a.get('format')} for {runtime}: {_bytes(a.get('size_bytes'))},"
            f" {_headline(a.get('metrics') or {}, fp32)}: gates {'passed' if passed else 'FAILED'}"
        )
    return lines


def _bytes(n: object) -> str:
    return f"{n:,} bytes" if isinstance(n, int) else "? bytes"


def _headline(m: dict[str, Any], ref: dict[str, Any] | None = None) -> str:
    """Accuracy (a classifier) or MAE (a regressor), and the change from ``ref``."""
    if "accuracy" in m:
        change = f" ({(m['accuracy'] - ref['accuracy']) * 100:+.1f} pt)" if ref else ""
        return f"accuracy {m['accuracy']:.3f}{change}"
    if "mae" in m:
        base = (ref or {}).get("mae")
        change = f" ({(m['mae'] - base) / base * 100:+.1f}%)" if base else ""
        return f"MAE {m['mae']:.4g}{change}"
    return "no figures"


class UploadProgress:
    """Call with the bytes sent so far; a bar on a terminal (stderr), silent in a log."""

    def __init__(self, name: str, total: int, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.name, self.total = name, total
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, sent: int) -> None:
        if not self.out.isatty():
            return
        if self._progress is None:
            from rich.progress import DownloadColumn, TransferSpeedColumn

            self._progress, self._task = _rich_bar(
                self.out, "  ", DownloadColumn(), TransferSpeedColumn()
            )
            self._progress.start()
        if self._task is not None:
            self._progress.update(
                self._task, completed=sent, total=self.total, description=f"uploading {self.name}"
            )
            self._progress.refresh()
        if sent >= self.total:
            self._progress.stop()
            self._progress = None


def _rich_bar(out: TextIO, prefix: str, *columns: Any) -> tuple[Progress, TaskID]:
    """A Rich progress bar on ``out``: the bar, then ``columns`` (default: a percentage),
    then the description."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    console = Console(file=out, markup=False, highlight=False, no_color="NO_COLOR" in os.environ)
    progress = Progress(
        TextColumn(prefix.rstrip() or ""),
        BarColumn(bar_width=30),
        *(columns or (TaskProgressColumn(),)),
        TextColumn("{task.description}"),
        console=console,
        auto_refresh=False,  # drawn when the job moved, not by a thread
        transient=False,
    )
    return progress, progress.add_task("", total=100)
