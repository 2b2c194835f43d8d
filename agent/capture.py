"""Data capture on the device: a bounded, seeded reservoir sample of what the model saw.

A :class:`Reservoir` is a row observer (agent/predictor.py ``RowObserver``): the Predictor
hands it every successful call's input rows and outputs. It keeps a uniform random
sample of at most ``max_rows`` rows: every row seen is equally likely to be in it
(reservoir sampling, Algorithm L, Li 1994: it draws ahead which row to keep next, so a
row that is not kept costs no random draw). Seeded: the same stream and seed give the
same sample. Memory is bounded twice: by rows, and by bytes (``max_bytes`` caps rows x
bytes per row once the first call shows the row's width).

Labels (the join rule): the application reports true labels right after it predicts,
on the same thread (``Predictor.record_labels(predicted, labels)``). Those labels join
the rows of the latest ``observe`` call *of that thread*, when they have as many rows
as that call and ``predicted`` equals the call's ``label`` output (if it has one). Each
call is joined at most once; a sampled row that another row has replaced since is not
labelled. Anything else (labels for an older call, a shape or a prediction that does not
match) is counted in ``labels_unmatched`` and dropped: a wrong label is worse than none.
Rows without a label carry ``-1``.

Rows of another model, or of another version than the first row captured (a deployment
during the capture), are skipped and counted: one sample describes one model version.

:func:`encode_sample` turns a sample into the upload's bytes: its arrays, raw
little-endian and C-ordered, one after the other, as its ``schema`` lists them. No
pickle, no zip: the hub parses it with a length check per array.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from agent.events import CaptureEnded
from shared import protocol
from shared.chunks import chunk_hashes

Array = npt.NDArray[Any]

DEFAULT_MAX_BYTES: Final = 4 * 2**20  # bytes a reservoir may hold (inputs + outputs + labels)
NO_LABEL: Final = -1  # the label of a row the application gave none for
LABEL_OUTPUT: Final = "label"  # the output a reported ``predicted`` is compared with
_DTYPES: Final = {"float32", "float64", "int32", "int64"}  # what an upload may carry


class CaptureError(Exception):
    """A sample that cannot be captured or encoded (an output of an unsupported type)."""


@dataclass(frozen=True)
class Sample:
    """What a reservoir holds at the end of a capture."""

    model: str
    version: int
    x: Array  # [rows, features] as the model saw them
    outputs: dict[str, Array]  # name -> [rows, ...]
    labels: npt.NDArray[np.int64]  # [rows]; NO_LABEL where none was reported
    seen: int  # rows observed (of this model version)

    @property
    def rows(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> int:
        return int(np.count_nonzero(self.labels != NO_LABEL))


class Reservoir:
    """A seeded reservoir sample of one model's rows. Thread-safe (one lock per call).

    Args:
        model: rows of this model only.
        max_rows: sample size at most.
        seed: the random stream that picks rows.
        max_bytes: memory bound; lowers ``max_rows`` when rows are wide.
    """

    def __init__(
        self, model: str, max_rows: int, *, seed: int = 0, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.model = model
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.seen = 0  # rows of the captured version observed
        self.skipped = 0  # rows of another model version
        self.labels_unmatched = 0  # label reports that joined no call
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._version: int | None = None
        self._capacity = max_rows
        self._x: Array | None = None
        self._outputs: dict[str, Array] = {}
        self._labels = np.full(0, NO_LABEL, dtype=np.int64)
        self._gen = np.zeros(0, dtype=np.int64)  # per slot: which row fills it (row number)
        self._w = 1.0  # Algorithm L's running weight
        self._next = 2**62  # number of the next row to keep once the sample is full

    # ------------------------------------------------------------- RowObserver

    def observe(self, model: str, version: int, x: Array, outputs: dict[str, Array]) -> None:
        """Offer a call's rows to the sample (the Predictor calls this)."""
        if model != self.model:
            return
        with self._lock:
            if self._x is None:
                self._allocate(version, x, outputs)
            if version != self._version or not self._fits(x, outputs):
                self.skipped += len(x)
                self._local.last = None
                return
            kept = self._offer(x, outputs)  # (row of the call, slot, the slot's row number)
        # labels may follow on this thread: remember where this call's rows went
        self._local.last = (kept, outputs.get(LABEL_OUTPUT), len(x))

    def observe_labels(self, predicted: Array, labels: Array) -> None:
        """Join true labels to the rows of this thread's latest call (module docstring)."""
        last = getattr(self._local, "last", None)
        self._local.last = None
        if last is None:
            self.labels_unmatched += 1
            return
        kept, call_predicted, n = last
        p, y = np.asarray(predicted).reshape(-1), np.asarray(labels).reshape(-1)
        if len(y) != n or (
            call_predicted is not None and not np.array_equal(p, np.reshape(call_predicted, -1))
        ):
            self.labels_unmatched += 1
            return
        if not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
            self.labels_unmatched += 1  # class indices only
            return
        if not kept:
            return
        with self._lock:
            for i, slot, number in kept:
                if self._gen[slot] == number:  # not replaced by a later row since
                    self._labels[slot] = y[i]

        # ------------------------------------------------------------- results

    def sample(self) -> Sample | None:
        """The sample so far (copies); None when no row of the model was seen."""
        with self._lock:
            if self._x is None or self._version is None:
                return None
            k = min(self.seen, self._capacity)
            return Sample(
                self.model,
                self._version,
                self._x[:k].copy(),
                {name: a[:k].copy() for name, a in self._outputs.items()},
                self._labels[:k].copy(),
                self.seen,
            )

    # ------------------------------------------------------------- internals

    def _allocate(self, version: int, x: Array, outputs: dict[str, Array]) -> None:
        row_bytes = x[0].nbytes if len(x) else x.itemsize * (x.shape[1] if x.ndim > 1 else 1)
        # An output of a type an upload cannot carry (strings, maps) is left out.
        kept = {name: out for name, out in outputs.items() if str(out.dtype) in _DTYPES}
        for out in kept.values():
            row_bytes += out.itemsize * int(np.prod(out.shape[1:], dtype=np.int64))
        row_bytes += 16  # the label and its slot's row number
        self._capacity = max(1, min(self.max_rows, self.max_bytes // max(1, row_bytes)))
        self._version = version
        self._x = np.zeros((self._capacity, *x.shape[1:]), dtype=x.dtype)
        self._outputs = {
            name: np.zeros((self._capacity, *out.shape[1:]), dtype=out.dtype)
            for name, out in kept.items()
        }
        self._labels = np.full(self._capacity, NO_LABEL, dtype=np.int64)
        self._gen = np.full(self._capacity, -1, dtype=np.int64)

    def _fits(self, x: Array, outputs: dict[str, Array]) -> bool:
        assert self._x is not None
        if x.shape[1:] != self._x.shape[1:] or x.dtype != self._x.dtype:
            return False
        return all(
            k in outputs and outputs[k].shape[1:] == a.shape[1:] and outputs[k].dtype == a.dtype
            for k, a in self._outputs.items()
        )

    def _offer(self, x: Array, outputs: dict[str, Array]) -> list[tuple[int, int, int]]:
        """Algorithm L over the call's rows: (row, slot, row number) of each row kept.

        Filling the first ``capacity`` rows costs no random draw; after that the next
        row to keep is drawn ahead (Li 1994), so a row that is not kept costs nothing.
        """
        assert self._x is not None
        n, k, seen = len(x), self._capacity, self.seen
        chosen: dict[int, tuple[int, int]] = {}  # slot -> (row of the call, row number)
        fill = max(0, min(n, k - seen))
        if fill:
            self._x[seen : seen + fill] = x[:fill]
            for name, a in self._outputs.items():
                a[seen : seen + fill] = outputs[name][:fill]
            self._labels[seen : seen + fill] = NO_LABEL
            self._gen[seen : seen + fill] = np.arange(seen, seen + fill)
            chosen = {seen + i: (i, seen + i) for i in range(fill)}
            if seen + fill == k:
                self._w = 1.0
                self._skip_ahead(k - 1)
        while self._next < seen + n:
            number = self._next
            i, slot = number - seen, int(self._rng.integers(k))
            self._x[slot] = x[i]
            for name, a in self._outputs.items():
                a[slot] = outputs[name][i]
            self._labels[slot] = NO_LABEL
            self._gen[slot] = number
            chosen[slot] = (i, number)  # a slot taken twice in one call: the later row wins
            self._skip_ahead(number)
        self.seen = seen + n
        return [(i, slot, number) for slot, (i, number) in chosen.items()]

    def _skip_ahead(self, number: int) -> None:
        """Draw the number of the next row to keep, after row ``number``."""
        k = self._capacity
        self._w *= math.exp(math.log(self._uniform()) / k)
        if self._w >= 1.0:  # only for k huge against the float's precision
            self._next = number + 1
            return
        self._next = number + 1 + math.floor(math.log(self._uniform()) / math.log1p(-self._w))

    def _uniform(self) -> float:
        """A uniform draw in (0, 1): log() of it is finite."""
        return 1.0 - float(self._rng.random())


def encode_sample(sample: Sample) -> tuple[bytes, list[dict[str, Any]]]:
    """The upload bytes of ``sample`` and their schema (docs/capture.md).

    Arrays in order: ``x``, ``out.<name>`` per output (sorted by name), ``labels``.

    Raises:
        CaptureError: an array of a type an upload cannot carry.
    """
    arrays = [("x", sample.x)]
    arrays += [(f"out.{name}", a) for name, a in sorted(sample.outputs.items())]
    arrays.append(("labels", sample.labels))
    schema: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for name, a in arrays:
        if str(a.dtype) not in _DTYPES:
            raise CaptureError(f"{name} of dtype {a.dtype} cannot be uploaded")
        little = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        schema.append({"name": name, "dtype": str(a.dtype), "shape": [int(d) for d in a.shape]})
        parts.append(little.tobytes())
    return b"".join(parts), schema


def decode_sample(data: bytes, schema: list[dict[str, Any]]) -> dict[str, Array]:
    """The arrays of upload bytes, as ``schema`` lists them (the inverse of encode_sample).

    Raises:
        CaptureError: the bytes do not have the length the schema says, or a bad dtype.
    """
    out: dict[str, Array] = {}
    pos = 0
    for spec in schema:
        dtype = str(spec["dtype"])
        if dtype not in _DTYPES:
            raise CaptureError(f"{spec['name']}: dtype {dtype} not allowed")
        shape = tuple(int(d) for d in spec["shape"])
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if pos + size > len(data):
            raise CaptureError(f"{spec['name']}: needs {size} bytes, {len(data) - pos} left")
        a = np.frombuffer(data[pos : pos + size], dtype=np.dtype(dtype).newbyteorder("<"))
        out[str(spec["name"])] = a.astype(dtype).reshape(shape)
        pos += size
    if pos != len(data):
        raise CaptureError(f"{len(data) - pos} bytes beyond the schema's arrays")
    return out


# ------------------------------------------------------------------ messages (sans-I/O)


def status_message(
    capture: str,
    model: str,
    status: str,
    now: float,
    *,
    reason: str | None = None,
    detail: str | None = None,
    rows: int | None = None,
) -> bytes:
    """A ``capture_status`` envelope (started, uploaded, failed, refused)."""
    body: dict[str, Any] = {"capture": capture, "model": model, "status": status}
    if reason is not None:
        body["reason"] = reason
    if detail:
        body["detail"] = detail[:1000]
    if rows is not None:
        body["rows"] = rows
    return protocol.encode("capture_status", body, ts=now)


def upload_manifest(
    capture: str,
    model: str,
    ended: CaptureEnded,
    *,
    chunk_size: int = protocol.MAX_CHUNK_BYTES,
) -> dict[str, Any]:
    """The ``upload_manifest`` body of a sample: its length, sha256 and chunk hashes."""
    data = ended.data or b""
    return {
        "capture": capture,
        "model": model,
        "version": ended.version,
        "rows": ended.rows,
        "labelled": ended.labelled,
        "schema": [dict(a) for a in ended.schema],
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "chunk_size": chunk_size,
        "chunks": chunk_hashes(data, chunk_size),
    }


def upload_chunks(capture: str, data: bytes, chunk_size: int, indices: Any) -> list[bytes]:
    """The ``upload`` messages of chunks ``indices`` of ``data``."""
    return [
        protocol.encode_upload_chunk(capture, i, data[i * chunk_size : (i + 1) * chunk_size])
        for i in indices
    ]


def upload_messages(
    capture: str,
    model: str,
    ended: CaptureEnded,
    *,
    chunk_size: int = protocol.MAX_CHUNK_BYTES,
) -> tuple[bytes, list[bytes]]:
    """The upload manifest (for ``capture``) and the chunks (for ``upload``) of a sample.

    Raises:
        ProtocolError: the sample is over the protocol's limits (the caller reports it).
    """
    data = ended.data or b""
    body = upload_manifest(capture, model, ended, chunk_size=chunk_size)
    manifest = protocol.encode("upload_manifest", body, ts=ended.now)
    return manifest, upload_chunks(capture, data, chunk_size, range(len(body["chunks"])))
