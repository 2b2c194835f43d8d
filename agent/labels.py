"""Late labels: recent predictions kept by id, and true labels joined to them later.

Every :meth:`~agent.predictor.Predictor.predict_versioned` call (so every ``POST
/v1/predict``) gets a **prediction id, one per call**; the call's rows are addressed by
their index in it (``row`` 0 for a one-row call). :class:`RecentPredictions` keeps, per
id, the model version that answered and its predicted label (a classifier's ``label``
output, else the argmax of ``probabilities``) or value (a regressor's ``value``) for each
row. It is bounded three ways, whatever the application does: the last ``max_entries``
ids, the last ``max_rows`` rows of predictions, and ``max_age_s`` seconds; its memory is
fixed (about 2.7 MiB by default, allocated at the first prediction).

A true label that arrives later (``POST /v1/labels``, :meth:`Predictor.join_labels`) is
joined to its row, and counts for the version that made the prediction (not the one
active now): a classifier's label is a class index or a class name and counts
``labelled``/``correct``; a regressor's is a number and adds to ``abs_err_sum`` and
``sq_err_sum``. Each item ends as one of:

- ``joined``: recorded;
- ``unknown``: no such id, or it was evicted or is older than ``max_age_s``
  (code ``unknown_id``);
- ``duplicate``: that row was labelled before, in this request or an earlier one: it
  counts once (code ``duplicate``);
- ``invalid``: the item is malformed or does not fit the prediction (codes ``bad_item``,
  ``bad_id``, ``bad_row``, ``bad_label``, ``no_label_output``, ``nonfinite_prediction``).

Every item that is not joined gets a per-item error ``{"index", "error", "detail"}``
(the first MAX_ITEM_ERRORS of them). Labels joined here do not reach data capture's
reservoir (agent/capture.py), which joins only labels given with the call itself.

Thread-safe: one lock around the table of predictions.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from shared.bodies import is_short_str

Array = npt.NDArray[Any]

MAX_PREDICTIONS: Final = 8192  # prediction ids kept (~190 bytes of slot each: ~1.5 MiB)
MAX_PREDICTED_ROWS: Final = 131_072  # rows' predictions kept, all ids (9 bytes each: 1.1 MiB)
MAX_AGE_S: Final = 3600.0  # seconds a prediction waits for its labels
MAX_LABELS: Final = 4096  # label items per request
MAX_ITEM_ERRORS: Final = 100  # per-item errors listed in one answer (all are counted)
FLOAT32_MAX: Final = float(np.finfo(np.float32).max)  # a regressor's label stays within it

Label = int | float | str


class LateLabel(NamedTuple):
    """A true label for one row of an earlier prediction."""

    id: str
    label: Label
    row: int = 0


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one label item was not joined."""

    index: int  # of the item in its request
    error: str  # a stable code (module docstring)
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "error": self.error, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Task:
    """What a model version predicts, as far as labels go (bound once per swap).

    Attributes:
        output: the output a label is compared with (``label``, ``probabilities`` or
            ``value``), None when the model has none of them.
        regression: the output is a value, not a class.
        classes: class names in index order (may be empty: then labels are indices).
        n_classes: how many classes, when known.
    """

    model: str
    version: int
    output: str | None
    regression: bool = False
    classes: tuple[str, ...] = ()
    n_classes: int | None = None


def task_of(
    model: str,
    version: int,
    outputs: Mapping[str, tuple[int | None, ...]],
    classes: Sequence[str] = (),
    scored: str | None = None,
) -> Task:
    """The :class:`Task` of a model whose outputs have these names and shapes.

    ``scored``: the output the hub scored the model on (its drift baseline names it),
    used when none is named ``label``, ``value`` or ``probabilities`` (a .tflite file's
    outputs carry TensorFlow's tensor names): class scores when the model has classes,
    else a regressor's value.
    """
    width = outputs.get("probabilities", ())
    n_classes = len(classes) or (width[-1] if width and isinstance(width[-1], int) else None)
    if "label" in outputs:
        return Task(model, version, "label", False, tuple(classes), n_classes)
    if "value" in outputs:
        return Task(model, version, "value", True)
    if "probabilities" in outputs:
        return Task(model, version, "probabilities", False, tuple(classes), n_classes)
    if scored is not None and scored in outputs:
        if classes:
            return Task(model, version, scored, False, tuple(classes), len(classes))
        return Task(model, version, scored, True)
    return Task(model, version, None)


@dataclass
class LabelReport:
    """The outcome of one batch of labels (the answer of ``POST /v1/labels``)."""

    joined: int = 0
    unknown: int = 0
    duplicate: int = 0
    invalid: int = 0
    errors: list[ItemError] = field(default_factory=list)

    def refuse(self, error: ItemError) -> None:
        if error.error == "unknown_id":
            self.unknown += 1
        elif error.error == "duplicate":
            self.duplicate += 1
        else:
            self.invalid += 1
        if len(self.errors) < MAX_ITEM_ERRORS:
            self.errors.append(error)

    def to_json(self) -> dict[str, Any]:
        return {
            "joined": self.joined,
            "unknown": self.unknown,
            "duplicate": self.duplicate,
            "invalid": self.invalid,
            "errors": [e.to_json() for e in self.errors],
        }


@dataclass(slots=True)
class VersionLabels:
    """Labels joined in one batch for one model version: what the recorder gets."""

    task: Task
    labelled: int = 0
    correct: int = 0
    abs_err_sum: float = 0.0
    sq_err_sum: float = 0.0


_Slot = tuple[int, float, int, int, Task]  # seq, monotonic time, first ring row, rows, task


class RecentPredictions:
    """Recent predictions by id, in fixed-size rings (module docstring).

    An id is a per-process random prefix and a sequence number ``seq``. Prediction
    ``seq`` lives in slot ``seq % max_entries`` (when it was made, where its rows start
    in the ring, how many, its task) until prediction ``seq + max_entries`` takes the
    slot; its rows' predicted values (a class index or a value, as float64) and their
    labelled flags live in a ring of ``max_rows`` rows until newer rows overwrite them.
    So memory is fixed whatever the application does: about ``max_entries * 190 +
    max_rows * 9`` bytes (~2.7 MiB by default), allocated at the first prediction (a
    device whose applications never ask for ids pays nothing). Age is checked when a
    label arrives.

    Args:
        max_entries / max_rows / max_age_s: the bounds.
        clock: monotonic seconds (a frozen clock in tests).
    """

    def __init__(
        self,
        max_entries: int = MAX_PREDICTIONS,
        max_rows: int = MAX_PREDICTED_ROWS,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_rows < 1 or max_age_s <= 0:
            raise ValueError("need max_entries >= 1, max_rows >= 1 and max_age_s > 0")
        self.max_entries = max_entries
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._clock = clock
        # Ids are unique per process: a random prefix (an id from before a restart is
        # unknown instead of naming another prediction) and a counter.
        self._prefix = secrets.token_hex(4) + "-"
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._head = 0  # rows written so far: the next row goes at _head % max_rows
        # per slot: (seq, monotonic time, first row in the ring, rows, task); the slots
        # and the rows' ring are allocated at the first prediction
        self._slots: list[_Slot | None] = []
        # per row of the ring
        self._values: Array = np.zeros(0)
        self._labelled = bytearray()

    def __len__(self) -> int:
        """Predictions whose id still resolves (age aside)."""
        with self._lock:
            return sum(1 for slot in self._slots if slot and self._head - slot[2] <= self.max_rows)

    def add(self, task: Task, outputs: Mapping[str, Array]) -> str:
        """Keep one call's predictions; its new id. On the hot path: kept cheap."""
        seq = next(self._ids)
        out = outputs.get(task.output) if task.output is not None else None
        now = self._clock()
        with self._lock:
            if not self._slots:
                self._allocate()
            head = self._head
            if out is None:
                rows = 0
            elif out.shape == (1,):  # one row's label, the common case: no slicing
                i = head % self.max_rows
                self._values[i] = out[0]
                self._labelled[i] = 0
                self._head = head + 1
                rows = 1
            elif len(out) <= self.max_rows:
                rows = self._write(task, out)
            else:  # more rows than the ring holds: the id stays unknown
                self._slots[seq % self.max_entries] = None
                return self._prefix + format(seq, "x")
            self._slots[seq % self.max_entries] = (seq, now, head, rows, task)
        return self._prefix + format(seq, "x")

    def _allocate(self) -> None:
        self._slots = [None] * self.max_entries
        self._values = np.zeros(self.max_rows)
        self._labelled = bytearray(self.max_rows)

    def _write(self, task: Task, out: Array) -> int:
        """Write the predicted rows at the ring's head (caller holds the lock); their count."""
        n = len(out)
        i = self._head % self.max_rows
        self._head += n
        if task.regression or out.ndim == 1:
            values = out.reshape(n, -1)[:, 0]  # a regressor's [N, 1] value, or labels
        else:
            values = out.argmax(axis=1)  # probabilities alone
        k = min(n, self.max_rows - i)  # rows before the ring wraps round
        self._values[i : i + k] = values[:k]
        self._values[: n - k] = values[k:]
        self._flag(i, n, 0)
        return n

    def _flag(self, i: int, n: int, value: int) -> None:
        """Set the labelled flags of ``n`` rows from ring position ``i`` (wrapping)."""
        k = min(n, self.max_rows - i)
        self._labelled[i : i + k] = bytes([value]) * k
        self._labelled[: n - k] = bytes([value]) * (n - k)

    def _slot(self, pid: str, now: float) -> _Slot | None:
        """The slot of a live prediction (caller holds the lock), None if unknown."""
        if not pid.startswith(self._prefix) or not self._slots:
            return None
        digits = pid[len(self._prefix) :]
        try:
            seq = int(digits, 16)
        except ValueError:
            return None
        if format(seq, "x") != digits:  # only the spelling we issued ("0a", " a", "+a": no)
            return None
        slot = self._slots[seq % self.max_entries]
        if (
            slot is None
            or slot[0] != seq
            or self._head - slot[2] > self.max_rows  # its rows were overwritten since
            or now - slot[1] > self.max_age_s
        ):
            return None
        return slot

    def mark_labelled(self, pid: str) -> None:
        """Every row of ``pid`` has its label already (given with the call itself): a
        later label for one of them is a duplicate."""
        with self._lock:
            slot = self._slot(pid, self._clock())
            if slot is not None:
                self._flag(slot[2] % self.max_rows, slot[3], 1)

    def join(
        self, items: Sequence[LateLabel | ItemError]
    ) -> tuple[LabelReport, list[VersionLabels]]:
        """Join labels to their rows; the outcome, and what to record per model version.

        An :class:`ItemError` in ``items`` (an item that failed parsing) is reported as it
        is; a :class:`LateLabel` is checked with :func:`check_label` first.
        """
        report = LabelReport()
        joined: dict[Task, list[tuple[float, Label]]] = {}  # task -> (predicted, label)
        now = self._clock()
        with self._lock:
            for index, item in enumerate(items):
                if isinstance(item, LateLabel):
                    item = check_label(index, item.id, item.row, item.label)
                if isinstance(item, ItemError):
                    report.refuse(item)
                    continue
                got = self._join_one(index, item, now)
                if isinstance(got, ItemError):
                    report.refuse(got)
                    continue
                report.joined += 1
                joined.setdefault(got[0], []).append(got[1:])
        return report, [_score(task, pairs) for task, pairs in joined.items()]

    def _join_one(
        self, index: int, item: LateLabel, now: float
    ) -> tuple[Task, float, Label] | ItemError:
        """Check one label against its prediction and mark the row (caller holds the lock)."""
        slot = self._slot(item.id, now)
        if slot is None:
            return ItemError(index, "unknown_id", f"no prediction {item.id!r} (or it expired)")
        _, _, start, rows, task = slot
        if task.output is None:
            return ItemError(
                index, "no_label_output", "the model has no 'label', 'probabilities' or 'value'"
            )
        if item.row >= rows:
            return ItemError(index, "bad_row", f"row {item.row} of a prediction of {rows} rows")
        label = _label_for(index, task, item.label)
        if isinstance(label, ItemError):
            return label
        pos = (start + item.row) % self.max_rows
        if self._labelled[pos]:
            return ItemError(index, "duplicate", f"row {item.row} of {item.id!r} has a label")
        value = float(self._values[pos])
        if not abs(value) <= FLOAT32_MAX:  # NaN and inf too: their errors would not add up
            return ItemError(
                index, "nonfinite_prediction", f"the predicted value {value} is not finite"
            )
        self._labelled[pos] = 1
        return task, value, label


def check_label(index: int, pid: Any, row: Any, label: Any) -> LateLabel | ItemError:
    """Type checks of one item, before it meets its prediction."""
    if not is_short_str(pid):
        return ItemError(index, "bad_id", '"id" must be a prediction id (a string)')
    if type(row) is not int or row < 0:
        return ItemError(index, "bad_row", '"row" must be an integer >= 0')
    if label is None or isinstance(label, bool) or not isinstance(label, int | float | str):
        return ItemError(index, "bad_label", '"label" must be a class index or name, or a number')
    return LateLabel(pid, label, row)


def parse_labels(raw: list[Any]) -> list[LateLabel | ItemError]:
    """The items of a ``POST /v1/labels`` body's ``labels`` list, each checked."""
    out: list[LateLabel | ItemError] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            out.append(ItemError(index, "bad_item", 'an item must be {"id", "row"?, "label"}'))
        else:
            out.append(check_label(index, item.get("id"), item.get("row", 0), item.get("label")))
    return out


def _label_for(index: int, task: Task, label: Label) -> Label | ItemError:
    """The label as the task compares it: a class index, or a finite float32 value."""
    if task.regression:
        if isinstance(label, str) or not abs(label) <= FLOAT32_MAX:
            return ItemError(index, "bad_label", f"a regressor's label is a number, got {label!r}")
        return float(label)
    if isinstance(label, str):
        if label not in task.classes:
            return ItemError(index, "bad_label", f"{label!r:.80} is not a class of the model")
        return task.classes.index(label)
    if isinstance(label, float) or label < 0 or (task.n_classes and label >= task.n_classes):
        limit = f"0..{task.n_classes - 1}" if task.n_classes else ">= 0"
        return ItemError(index, "bad_label", f"a class index is an integer {limit}, got {label!r}")
    return label


def _score(task: Task, pairs: list[tuple[Any, Label]]) -> VersionLabels:
    predicted = np.array([p for p, _ in pairs])
    labels = np.array([y for _, y in pairs])
    out = VersionLabels(task, labelled=len(pairs))
    if task.regression:
        err = np.abs(predicted.astype(np.float64) - labels.astype(np.float64))
        out.abs_err_sum = float(err.sum())
        out.sq_err_sum = float(np.dot(err, err))
    else:
        out.correct = int(np.count_nonzero(predicted == labels))
    return out
