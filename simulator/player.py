"""A virtual device's application on a dataset's rows: it infers, then reports true labels.

:class:`RowPlayer` is what an application on the device would do with the operator's
data: it takes the next rows of its :class:`~simulator.rows.RowDeck`, runs the real
:class:`~agent.predictor.Predictor` on them and reports each row's true label to the
agent, so the device's telemetry carries live accuracy (a classifier) or the error sums
of a regressor, for the model version that answered.

A share of the rows (``late_share``, a seeded draw per row) has its label reported
**later**, as an application learns the truth after the fact: the call is made with
:meth:`~agent.predictor.Predictor.predict_versioned`, and ``late_after_s`` seconds on
those rows' labels go to :meth:`~agent.predictor.Predictor.join_labels` by prediction id
(the path of ``POST /v1/labels``, docs/endpoint.md). A device that restarted in between
has a new agent, which no longer knows the id: those labels are counted as refused.

The other rows are labelled at once: a classifier's with
:meth:`~agent.predictor.Predictor.record_labels` (the ``labels`` of a predict call); a
regressor's, which the agent takes only by id, with ``join_labels`` right after the call.

Labels meet the model's classes by name: the model's ``classes`` (its manifest, which
the hub sorts) in index order; a file's label that is not one of them is counted in
``unmatched`` and not reported. A model without class names takes integral labels as
class indices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.labels import MAX_ITEM_ERRORS, LateLabel, Task
from agent.predictor import Predictor
from agent.runtime import InferenceError, NoModelError
from simulator.rows import RowDeck, RowSource

__all__ = ["RowPlayer", "Tally"]

IntArray = npt.NDArray[np.int64]
CallLater = Callable[[float, Callable[[], None]], Any]


@dataclass
class Tally:
    """What one virtual device inferred and labelled (its own record, not the hub's)."""

    inferences: int = 0  # rows inferred
    errors: int = 0  # calls the runtime refused
    labelled: int = 0  # rows whose true label the agent took, at once or joined later
    correct: int = 0  # of those, right (a classifier)
    labelled_values: int = 0  # of those, a regressor's (with a value for a label)
    abs_err_sum: float = 0.0  # of those, sum of |value - label|
    late: int = 0  # rows whose label was sent later, by prediction id
    late_joined: int = 0  # of those, joined by the agent
    late_refused: int = 0  # of those, refused (an unknown id after a restart) or lost
    unmatched: int = 0  # rows whose label is not a class of the model: not reported

    @classmethod
    def total(cls, tallies: Iterable[Tally]) -> Tally:
        """The sum of several devices' tallies (safe to call from another thread)."""
        out = cls()
        for t in tallies:
            for f in fields(cls):
                setattr(out, f.name, getattr(out, f.name) + getattr(t, f.name))
        return out

    @property
    def pending(self) -> int:
        """Late labels not yet sent to the agent."""
        return self.late - self.late_joined - self.late_refused


@dataclass(frozen=True)
class _Late:
    """Labels on their way: the items, and what each adds once joined."""

    items: list[LateLabel]
    correct: npt.NDArray[np.bool_]  # per item (a classifier)
    abs_err: npt.NDArray[np.float64]  # per item (a regressor)
    value: bool = False  # a regressor's labels


class RowPlayer:
    """Plays a :class:`RowSource` on one device (module docstring).

    Args:
        source: the rows.
        seed: this device's seed (its order of play and which rows are labelled late).
        tally: where the counts go.
        current: the device's predictor now, or None while it is down (for late labels).
        call_later: schedules a call on the device's thread, ``(delay_s, fn)``.
        passes: plays of every row before it stops (None: never stops).
        late_share: share of rows labelled later, 0..1.
        late_after_s: how much later (s).
    """

    def __init__(
        self,
        source: RowSource,
        seed: int,
        tally: Tally,
        current: Callable[[], Predictor | None],
        call_later: CallLater,
        *,
        passes: int | None = None,
        late_share: float = 0.0,
        late_after_s: float = 2.0,
    ) -> None:
        if not 0.0 <= late_share <= 1.0 or late_after_s < 0:
            raise ValueError("late_share must be within 0..1 and late_after_s >= 0")
        self.source = source
        self.deck = RowDeck(len(source), seed, passes)
        self.tally = tally
        self._current = current
        self._call_later = call_later
        self._late_rng = np.random.default_rng([seed, 1])
        self.late_share = late_share
        self.late_after_s = late_after_s
        self._names = source.class_names()
        self._class_cache: tuple[Task, IntArray] | None = None  # class index of every row

    @property
    def finished(self) -> bool:
        """Every pass is played (never, without a number of passes)."""
        return self.deck.finished

    def play(self, predictor: Predictor, batch: int) -> tuple[IntArray, IntArray] | None:
        """Infer on the next ``batch`` rows and report their labels.

        Returns:
            a classifier's (predicted, true) class indices of the rows labelled at once,
            for the fleet's label taps; None otherwise.
        """
        idx = self.deck.peek(batch)
        task = predictor.task
        if len(idx) == 0 or task is None:
            return None
        late = self._late_rng.random(len(idx)) < self.late_share
        pid: str | None = None
        try:
            if task.regression or late.any():
                pred = predictor.predict_versioned(self.source.x[idx])
                outputs, pid = pred.outputs, pred.id
            else:
                outputs = predictor.predict(self.source.x[idx])
        except NoModelError:
            return None
        except InferenceError:
            self.tally.errors += 1
            return None
        self.deck.advance(len(idx))
        self.tally.inferences += len(idx)
        if task.output is None:
            return None
        if task.regression:
            self._regressor(predictor, task, outputs, idx, late, pid)
            return None
        return self._classifier(predictor, task, outputs, idx, late, pid)

    def _classifier(
        self,
        predictor: Predictor,
        task: Task,
        outputs: dict[str, Any],
        idx: IntArray,
        late: npt.NDArray[np.bool_],
        pid: str | None,
    ) -> tuple[IntArray, IntArray]:
        out = outputs[task.output or "label"]
        predicted = np.asarray(out if out.ndim == 1 else out.argmax(axis=1), dtype=np.int64)
        truth = self._classes(task)[idx]
        known = truth >= 0
        self.tally.unmatched += int(np.count_nonzero(~known))
        now = known & ~late
        if now.any():
            p, y = predicted[now], truth[now]
            predictor.record_labels(p, y, model=task.model, version=task.version)
            self.tally.labelled += len(y)
            self.tally.correct += int(np.count_nonzero(p == y))
        rows = np.flatnonzero(known & late)
        if pid is not None and len(rows):
            names = task.classes
            items = [
                LateLabel(pid, names[truth[i]] if names else int(truth[i]), int(i)) for i in rows
            ]
            self._send_later(_Late(items, predicted[rows] == truth[rows], np.zeros(len(rows))))
        return predicted[now], truth[now]

    def _regressor(
        self,
        predictor: Predictor,
        task: Task,
        outputs: dict[str, Any],
        idx: IntArray,
        late: npt.NDArray[np.bool_],
        pid: str | None,
    ) -> None:
        if self.source.text_labels or pid is None:  # text cannot be a regressor's truth
            self.tally.unmatched += len(idx)
            return
        values = np.asarray(outputs[task.output or "value"], dtype=np.float64).reshape(len(idx))
        truth = self.source.labels[idx]
        abs_err = np.abs(values - truth)
        now = np.flatnonzero(~late)
        if len(now):
            joined = _join(predictor, [LateLabel(pid, float(truth[i]), int(i)) for i in now])
            self.tally.labelled += int(joined.sum())
            self.tally.labelled_values += int(joined.sum())
            self.tally.abs_err_sum += float(abs_err[now][joined].sum())
        rows = np.flatnonzero(late)
        if len(rows):
            items = [LateLabel(pid, float(truth[i]), int(i)) for i in rows]
            self._send_later(_Late(items, np.zeros(len(rows), dtype=bool), abs_err[rows], True))

    def _classes(self, task: Task) -> IntArray:
        """Every row's class index in ``task``'s classes (-1: not one of them), cached."""
        if self._class_cache is not None and self._class_cache[0] == task:
            return self._class_cache[1]
        if task.classes:
            index = {name: i for i, name in enumerate(task.classes)}
            classes = np.array([index.get(str(n), -1) for n in self._names], dtype=np.int64)
        elif not self.source.text_labels:
            values = self.source.labels
            whole = np.floor(values) == values
            classes = np.where(whole & (values >= 0), values, -1).astype(np.int64)
            if task.n_classes is not None:
                classes[classes >= task.n_classes] = -1
        else:
            classes = np.full(len(self.source), -1, dtype=np.int64)
        self._class_cache = (task, classes)
        return classes

    def _send_later(self, late: _Late) -> None:
        self.tally.late += len(late.items)
        self._call_later(self.late_after_s, lambda: self._join(late))

    def _join(self, late: _Late) -> None:
        predictor = self._current()
        if predictor is None:  # the device is down: the application's labels are lost
            self.tally.late_refused += len(late.items)
            return
        joined = _join(predictor, late.items)
        n = int(joined.sum())
        self.tally.late_joined += n
        self.tally.late_refused += len(late.items) - n
        self.tally.labelled += n
        if late.value:
            self.tally.labelled_values += n
        self.tally.correct += int(np.count_nonzero(late.correct[joined]))
        self.tally.abs_err_sum += float(late.abs_err[joined].sum())


def _join(predictor: Predictor, items: list[LateLabel]) -> npt.NDArray[np.bool_]:
    """Join ``items``; which of them were joined. In parts that a report lists every
    refused item of (it lists the first MAX_ITEM_ERRORS)."""
    joined = np.ones(len(items), dtype=bool)
    for start in range(0, len(items), MAX_ITEM_ERRORS):
        report = predictor.join_labels(items[start : start + MAX_ITEM_ERRORS])
        for e in report.errors:
            joined[start + e.index] = False
    return joined
