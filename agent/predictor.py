"""The Predictor: what local applications call to run the active model, with telemetry.

Applications call it directly or through agent/endpoint.py. It runs the active
:class:`~agent.runtime.ModelSession`, checks the outputs are finite, records each call for
the telemetry window (agent/telemetry.py), hands the rows to its observers (drift
sketches, data capture) and is swapped atomically on activation. Its errors are the
runtime's (agent/runtime.py): :class:`~agent.runtime.NoModelError` before any model was
activated, :class:`~agent.runtime.InferenceError` when the runtime refuses an input.

:meth:`Predictor.predict_versioned` gives each call a prediction id and keeps its
predictions for a while (agent/labels.py), so true labels that come later
(:meth:`Predictor.join_labels`) count for the model version that made them.
:meth:`Predictor.predict`, the bare hot path, keeps nothing and gives no id.

Inputs: a batch ``[N, *row_shape]`` of the model's input (``[N, features]``, images
``[N, H, W]`` or ``[N, H, W, C]``, windows ``[N, T, C]``), or one row ``row_shape``,
which gets the batch axis added (the model's input rank says which it is).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from time import perf_counter_ns
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from agent.labels import ItemError, LabelReport, LateLabel, RecentPredictions, Task, task_of
from agent.runtime import Array, InferenceError, ModelSession, NoModelError, RunFn
from agent.telemetry import InferenceStats, StatsRecorder

_as_c_array = np.ascontiguousarray  # module-level names: one lookup less per call
_isfinite = math.isfinite

log = logging.getLogger(__name__)


class RowObserver(Protocol):
    """Sees every successful predict call's rows (drift sketches, data capture).

    Called on the caller's thread after the outputs are computed, so it must be cheap
    and thread-safe. An exception is counted in ``Predictor.observer_errors`` and logged,
    never raised to the application.
    """

    def observe(self, model: str, version: int, x: Array, outputs: dict[str, Array]) -> None:
        """``x`` is the batch as the model saw it ([rows, *row_shape]); outputs batched."""

    def observe_labels(self, predicted: Array, labels: Array) -> None:
        """True labels the application reported for predicted ones (same shape)."""


_FAST_CHECK_DTYPES = ("float32", "float64")  # BLAS dot; other float types use np.isfinite


class Prediction(NamedTuple):
    """Outputs, the model version that computed them, and the call's prediction id
    (labels for its rows name it, agent/labels.py)."""

    model: str
    version: int
    outputs: dict[str, Array]
    id: str


class SeveralModelsError(Exception):
    """A call that names no model on a device that serves several: it must name one."""

    def __init__(self, models: Sequence[str]) -> None:
        self.models = tuple(sorted(models))
        super().__init__(f"this device serves several models ({', '.join(self.models)}): name one")


class _Active(NamedTuple):
    """Everything predict needs, bound once per swap: one read and one unpack per call."""

    run: RunFn
    output_names: list[str]
    input_name: str
    input_dtype: np.dtype[Any]
    row_rank: int  # dimensions of one row: an input of this rank gets the batch axis
    dot_checked: tuple[int, ...]  # float32/64 outputs: finite iff dot(v, v) is finite
    slow_checked: tuple[int, ...]  # other float outputs (float16): np.isfinite
    model: str
    version: int
    session: ModelSession
    task: Task  # what labels of its predictions are compared with
    features: tuple[str, ...]  # input feature names in order (its manifest's baseline), or ()
    recorder: StatsRecorder  # the model's own telemetry (kept across its versions)


class ServedModel(NamedTuple):
    """One model the predictor serves: its version, session, label task and features."""

    model: str
    version: int
    session: ModelSession
    task: Task
    features: tuple[str, ...]


class Predictor:
    """The on-device inference API: predict on the active models, with telemetry.

    A device may serve several models at once (an anomaly detector and a classifier),
    each with its own active version and its own :class:`StatsRecorder`. A call names
    its model (``model=``); a call that names none runs the only model, and raises
    :class:`SeveralModelsError` when there are several.

    Thread-safe. :meth:`swap` replaces one model's active version with one reference
    assignment: calls already running finish on the version they started with, and the
    other models are not touched.

    Args:
        recorder: where the first model's calls are recorded (a fresh one by default);
            each further model gets its own. The agent core drains them once per
            telemetry window (:meth:`drain`).
        predictions: where :meth:`predict_versioned` keeps its predictions for late
            labels (the bounds of agent/labels.py by default).
    """

    __slots__ = (
        "_active",
        "_models",
        "_recorders",
        "observer_errors",
        "observers",
        "predictions",
        "recorder",
    )

    def __init__(
        self,
        recorder: StatsRecorder | None = None,
        predictions: RecentPredictions | None = None,
    ) -> None:
        self.recorder = recorder if recorder is not None else StatsRecorder()
        self.predictions = predictions if predictions is not None else RecentPredictions()
        # model -> what serves it; replaced whole on each change, never mutated in place
        self._models: dict[str, _Active] = {}
        self._active: _Active | None = None  # the only model, when there is exactly one
        self._recorders: dict[str, StatsRecorder] = {}  # model -> its telemetry
        # Replaced, never mutated in place, so a concurrent predict sees a whole tuple.
        self.observers: tuple[RowObserver, ...] = ()
        self.observer_errors = 0

    def add_observer(self, observer: RowObserver) -> None:
        """Let ``observer`` see every successful call from now on."""
        self.observers = (*self.observers, observer)

    def remove_observer(self, observer: RowObserver) -> None:
        self.observers = tuple(o for o in self.observers if o is not observer)

    def swap(
        self,
        session: ModelSession,
        model: str,
        version: int,
        classes: Sequence[str] = (),
        features: Sequence[str] = (),
        scored: str | None = None,
    ) -> None:
        """Make ``session`` the active version of ``model`` (atomic; other models stay).

        Args:
            classes: the model's class names in index order (its manifest's
                ``classes``), so late labels may name a class; empty: indices only.
            features: the names of its input's features in order (its manifest's drift
                baseline), for applications that ask; empty: not known.
            scored: the output the hub scored it on (its drift baseline's ``output``),
                for a model whose outputs are not named ``label``, ``probabilities`` or
                ``value`` (agent/labels.py ``task_of``).

        Raises:
            ValueError: the model does not have exactly one input.
        """
        if len(session.inputs) != 1:
            raise ValueError(f"the Predictor serves single-input models; got {session.inputs}")
        kinds = [o.dtype for o in session.outputs]
        active = _Active(
            run=session.run_fn,
            output_names=[o.name for o in session.outputs],
            input_name=session.input_name,
            input_dtype=np.dtype(session.inputs[0].dtype),
            row_rank=len(session.inputs[0].shape) - 1,
            dot_checked=tuple(i for i, k in enumerate(kinds) if k in _FAST_CHECK_DTYPES),
            slow_checked=tuple(
                i
                for i, k in enumerate(kinds)
                if k.startswith("float") and k not in _FAST_CHECK_DTYPES
            ),
            model=model,
            version=version,
            session=session,
            task=task_of(
                model, version, {o.name: o.shape for o in session.outputs}, classes, scored
            ),
            features=tuple(features),
            recorder=self._recorder_of(model),
        )
        self._set({**self._models, model: active})

    def _set(self, models: dict[str, _Active]) -> None:
        self._models = models
        self._active = next(iter(models.values())) if len(models) == 1 else None

    def _recorder_of(self, model: str) -> StatsRecorder:
        """The model's recorder: the constructor's for the first model, then a new one."""
        recorder = self._recorders.get(model)
        if recorder is None:
            taken = self.recorder in self._recorders.values()
            recorder = StatsRecorder() if taken else self.recorder
            self._recorders = {**self._recorders, model: recorder}
        return recorder

    def deactivate(self, model: str | None = None) -> None:
        """``model`` (None: every model) is no longer served: a call naming it raises
        NoModelError until its next swap. The other models go on serving."""
        if model is None:
            self._set({})
        else:
            self._set({m: a for m, a in self._models.items() if m != model})

    def drain(self) -> dict[str, InferenceStats]:
        """Close every model's telemetry window: its calls since the last drain, by model."""
        return {model: recorder.drain() for model, recorder in self._recorders.items()}

    @property
    def models(self) -> dict[str, int]:
        """Each model served and its active version."""
        return {m: a.version for m, a in self._models.items()}

    def served(self, model: str | None = None) -> ServedModel | None:
        """What serves ``model`` (None: the only model), or None: no such model, or
        several and none named."""
        a = self._active if model is None else self._models.get(model)
        return None if a is None else ServedModel(a.model, a.version, a.session, a.task, a.features)

    @property
    def active(self) -> tuple[str, int] | None:
        """``(model, version)`` of the only model, or None (none, or several)."""
        a = self._active
        return None if a is None else (a.model, a.version)

    @property
    def task(self) -> Task | None:
        """What labels of the only model's predictions are compared with (its output,
        classifier or regressor, class names in index order), or None."""
        a = self._active
        return None if a is None else a.task

    @property
    def features(self) -> tuple[str, ...]:
        """The only model's input feature names in order (empty: unknown or none)."""
        a = self._active
        return () if a is None else a.features

    @property
    def session(self) -> ModelSession | None:
        a = self._active
        return None if a is None else a.session

    def predict(self, x: npt.ArrayLike, model: str | None = None) -> dict[str, Array]:
        """Run ``model`` (None: the only model) on one row or a batch (module docstring).

        The input is converted to the model's dtype and made C-contiguous only when it is
        not already (no copy otherwise). Outputs are always batched (a row gives 1 row).

        Raises:
            NoModelError: no model is active (or not the one named).
            SeveralModelsError: no model named, and several are served.
            InferenceError: the input was refused or the runtime failed (counted).
        """
        return self._predict(self._active if model is None else self._lookup(model), x)

    def predict_versioned(self, x: npt.ArrayLike, model: str | None = None) -> Prediction:
        """:meth:`predict`, tagged with the model and version that computed it and a
        prediction id; the predictions are kept for :meth:`join_labels`.

        Reading :attr:`active` before or after :meth:`predict` could name another model
        if a swap happens in between; this cannot.
        """
        active = self._active if model is None else self._lookup(model)
        outputs = self._predict(active, x)
        assert active is not None  # _predict raised otherwise
        pid = self.predictions.add(active.task, outputs)
        return Prediction(active.model, active.version, outputs, pid)

    def _lookup(self, model: str) -> _Active:
        active = self._models.get(model)
        if active is None:
            raise NoModelError(f"model {model!r} is not active on this device")
        return active

    def _predict(self, active: _Active | None, x: npt.ArrayLike) -> dict[str, Array]:
        if active is None:
            if len(models := self._models) > 1:
                raise SeveralModelsError(list(models))
            raise NoModelError("no model is active")
        run, names, input_name, dtype, row_rank, dot_checked, slow_checked, model, version = active[
            :9
        ]
        try:
            arr = _as_c_array(x, dtype)  # x itself when already right: no copy
            if arr.ndim == row_rank:  # one row: add the batch axis (a view)
                arr = arr[None]
            t0 = perf_counter_ns()
            outs = run(names, {input_name: arr}, None)
            t1 = perf_counter_ns()
        except Exception as e:
            active.recorder.record_error()
            raise InferenceError(model, version, f"{type(e).__name__}: {e}") from e
        # Non-finite check on float outputs only (labels are ints). dot(v, v) is one BLAS
        # call, ~0.2 µs at batch 1 and ~0.45 µs at 256, against ~0.8 µs for v.sum() and
        # ~1.1 µs for np.isfinite(v).all(): a NaN or inf anywhere makes it non-finite
        # (squares cannot cancel). Caveat: |v| > 1.8e19 in float32 overflows and counts
        # as non-finite too, which for a model's output is as alarming.
        nonfinite = False
        for i in dot_checked:
            v = outs[i].ravel()
            if not _isfinite(v.dot(v)):
                nonfinite = True
        for i in slow_checked:
            if not np.isfinite(outs[i]).all():
                nonfinite = True
        active.recorder.record(t1 - t0, arr.shape[0], nonfinite)
        result = dict(zip(names, outs))  # noqa: B905  (strict=True costs 0.1 µs; same lengths)
        if self.observers:
            for observer in self.observers:
                try:
                    observer.observe(model, version, arr, result)
                except Exception:
                    self.observer_errors += 1
                    log.exception("predictor: observer %r failed", observer)
        return result

    def record_labels(
        self,
        predicted: npt.ArrayLike,
        labels: npt.ArrayLike,
        *,
        model: str | None = None,
        version: int | None = None,
    ) -> None:
        """Report true labels for predicted ones (live accuracy), on the thread that just
        predicted them (data capture joins them to that call, agent/capture.py).

        Args:
            model / version: the version that predicted them (a :class:`Prediction`
                says); without them, the labels count for the window's active model.

        Raises:
            ValueError: the two do not have the same shape.
        """
        p = np.asarray(predicted)
        y = np.asarray(labels)
        if p.shape != y.shape:
            raise ValueError(f"predicted {p.shape} and labels {y.shape} differ in shape")
        recorder = self._recorders.get(model, self.recorder) if model else self.recorder
        recorder.record_labels(
            int(p.size), int(np.count_nonzero(p == y)), model=model, version=version
        )
        for observer in self.observers:
            try:
                observer.observe_labels(p, y)
            except Exception:
                self.observer_errors += 1
                log.exception("predictor: observer %r failed on labels", observer)

    def join_labels(self, items: Iterable[LateLabel | ItemError]) -> LabelReport:
        """Join true labels that came later to the rows of earlier predictions, and
        record them for the versions that made those predictions (agent/labels.py).

        Never raises for a bad item: the report counts it and says why (an
        :class:`~agent.labels.ItemError` among ``items``, from parsing, is reported as is).
        """
        report, versions = self.predictions.join(list(items))
        for v in versions:
            task = v.task
            recorder = self._recorders.get(task.model, self.recorder)
            if task.regression:
                recorder.record_errors(
                    task.model, task.version, v.labelled, v.abs_err_sum, v.sq_err_sum
                )
            else:
                recorder.record_labels(
                    v.labelled, v.correct, model=task.model, version=task.version
                )
        return report

    def record_label(
        self, prediction_id: str, label: int | float | str, row: int = 0
    ) -> LabelReport:
        """One row's true label (a class index or name, or a regressor's value): the
        one-item :meth:`join_labels`; ``report.joined == 1`` when it counted."""
        return self.join_labels([LateLabel(prediction_id, label, row)])
