"""Data capture on the hub: ask devices for samples, verify their uploads, keep datasets.

``Datasets.start_capture(model, device_ids, rows, duration_s)`` sends each device a
signed ``capture`` command and records the capture in SQL. Each device answers on its
``capture`` topic (``capture_status``, then an ``upload_manifest``) and sends its rows in
chunks on ``upload`` (docs/capture.md). hub/transport/link.py hands both to :meth:`on_message` and
:meth:`on_chunk`, on the MQTT thread.

Nothing unverified is stored: each chunk is checked against the sha256 its manifest lists
before it is written to the staging area, the whole upload against its length and sha256,
and its arrays against the manifest's schema. A chunk that fails its hash fails that
device's upload (reason ``chunk_hash_mismatch``; what it had sent is deleted). Chunks that
do not come (a lost connection, a broker restart) are asked for again: after a quiet
interval (:meth:`resume_uploads`, on a timer) and at once when the device announces its
upload again on reconnecting; after ``max_asks`` unanswered asks, or at the capture's
deadline, the upload fails with ``upload_incomplete`` (docs/capture.md, ADR 0039). The
device keeps its upload on disk until the hub tells it the outcome (``upload_done``).
When every device has an outcome (or the deadline passed), the verified uploads become
one dataset version: an npz artifact in the content-addressed store and a
``DatasetVersion`` row.

This module keeps the captures' state (SQL) and the uploads in progress;
hub/ml/data/capture_uploads.py checks an upload's chunks, bytes and arrays, and
hub/ml/data/captured_rows.py writes and reads the npz files.

Exceptions::

    DatasetError(reason, detail)     unknown capture or dataset, bad arguments
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from sqlalchemy import Engine
from sqlmodel import col, select

from hub.ml.data.capture_uploads import Upload, chunk_problem, manifest_problem, parse_upload
from hub.ml.data.captured_rows import (
    NO_LABEL,
    CapturedData,
    captured_data,
    merge_device_rows,
    to_npz,
    write_device_rows,
)
from hub.ml.data.upload_asks import SendRequest, UploadAsks
from hub.store.artifacts import ArtifactStore
from hub.store.tables import Capture, CaptureDevice, DatasetVersion, session
from shared import protocol
from shared.protocol import ProtocolError, UploadChunk
from shared.reasons import Reason

__all__ = [
    "NO_LABEL",
    "CapturedData",
    "DatasetError",
    "Datasets",
    "SendCommand",
    "parse_upload",
]

log = logging.getLogger(__name__)

UPLOAD_GRACE_S: Final = 120.0  # seconds after a capture's end for its uploads to arrive
ASSUMED_WINDOW_S: Final = 10.0  # seconds per telemetry window (CoreConfig's default)
MAX_CAPTURE_DEVICES: Final = 10_000  # devices one capture may ask
TERMINAL: Final = frozenset({"verified", "failed", "refused"})
SendCommand = Callable[[str, str, Mapping[str, Any]], None]  # (device, type, body)
OnDataset = Callable[[DatasetVersion, dict[str, Any]], None]  # (row, its arrays)


class DatasetError(Exception):
    """A capture or dataset request that cannot be met.

    Attributes:
        reason: ``not_found`` or ``invalid``.
        detail: what exactly.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Datasets:
    """Captures and dataset versions. Thread-safe (MQTT thread, API threads)."""

    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore,
        staging_dir: Path,
        send_command: SendCommand,
        *,
        clock: Callable[[], float] = time.time,
        on_dataset: OnDataset | None = None,
        send_request: SendRequest | None = None,
    ) -> None:
        self.engine = engine
        self.on_dataset = on_dataset  # each new capture's rows, after they are committed
        self.store = store
        self.staging_dir = staging_dir
        self.send_command = send_command
        self.clock = clock
        self.grace_s = UPLOAD_GRACE_S  # seconds after a capture's end for its uploads
        self.counts: Counter[str] = Counter()
        # asks devices for what their uploads lack (its quiet_s, max_asks), tells outcomes
        self.asks = UploadAsks(send_request, self.counts)
        self._lock = threading.RLock()
        self._uploads: dict[tuple[str, str], Upload] = {}
        staging_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------- captures

    def start_capture(
        self,
        model: str,
        device_ids: Sequence[str],
        rows: int,
        duration_s: float | None = None,
        *,
        windows: int | None = None,
        seed: int = 0,
        created_by: str | None = None,
    ) -> str:
        """Ask each device for a sample of up to ``rows`` rows; the capture's id.

        Args:
            duration_s / windows: how long the devices sample (one of them).

        Raises:
            DatasetError: ``invalid`` arguments.
        """
        ids = list(dict.fromkeys(device_ids))
        problems = [
            msg
            for bad, msg in (
                (not 0 < len(model) <= 64, "model must be a name of 1-64 characters"),
                (not 0 < len(ids) <= MAX_CAPTURE_DEVICES, f"1..{MAX_CAPTURE_DEVICES} devices"),
                (any(not protocol.is_device_id(d) for d in ids), "invalid device id"),
                (not 1 <= rows <= protocol.MAX_CAPTURE_ROWS, "rows out of range"),
                ((duration_s is None) == (windows is None), "give duration_s or windows"),
                (
                    duration_s is not None and not 0 < duration_s <= protocol.MAX_CAPTURE_S,
                    f"duration_s must be within (0, {protocol.MAX_CAPTURE_S}]",
                ),
                (
                    windows is not None and not 1 <= windows <= protocol.MAX_CAPTURE_WINDOWS,
                    f"windows must be within 1..{protocol.MAX_CAPTURE_WINDOWS}",
                ),
            )
            if bad
        ]
        if problems:
            raise DatasetError("invalid", "bad capture request: " + "; ".join(problems))
        now = self.clock()
        row = Capture(
            id=uuid.uuid4().hex[:16],
            model=model,
            max_rows=rows,
            duration_s=duration_s,
            windows=windows,
            seed=seed,
            created_by=created_by,
            created_at=now,
            deadline=now,
        )
        row.deadline = now + _length_s(row) + self.grace_s
        with session(self.engine) as s:
            s.add(row)
            s.add_all(CaptureDevice(capture_id=row.id, device_id=d, updated_at=now) for d in ids)
            s.commit()
        for i, device_id in enumerate(ids):
            body: dict[str, Any] = {"capture": row.id, "model": model, "max_rows": rows}
            body["seed"] = seed + i  # devices of one capture pick independent rows
            if duration_s is not None:
                body["duration_s"] = duration_s
            else:
                body["windows"] = windows
            self.send_command(device_id, "capture", body)
        log.info("capture %s of %s asked from %d device(s)", row.id, model, len(ids))
        return row.id

    def capture(self, capture_id: str) -> dict[str, Any]:
        """The capture and each device's status.

        Raises:
            DatasetError: ``not_found``.
        """
        self.sweep()
        with session(self.engine) as s:
            row = s.get(Capture, capture_id)
            if row is None:
                raise DatasetError("not_found", f"no capture {capture_id!r}")
            devices = s.exec(
                select(CaptureDevice).where(CaptureDevice.capture_id == capture_id)
            ).all()
        out = row.model_dump()
        out["devices"] = [d.model_dump(exclude={"capture_id"}) for d in devices]
        out["statuses"] = dict(Counter(d.status for d in devices))
        return out

    def sweep(self) -> None:
        """Fail uploads still missing past their capture's deadline; finish such captures."""
        now = self.clock()
        with session(self.engine) as s:
            due = s.exec(
                select(Capture.id).where(Capture.state == "running", Capture.deadline < now)
            ).all()
        for capture_id in due:
            self._finish(capture_id, deadline_passed=True)

    # ------------------------------------------------------------- datasets

    def datasets(self, model: str | None = None) -> list[DatasetVersion]:
        with session(self.engine) as s:
            q = select(DatasetVersion).order_by(col(DatasetVersion.created_at))
            if model is not None:
                q = q.where(DatasetVersion.model == model)
            return list(s.exec(q))

    def dataset_row(self, dataset_id: str) -> DatasetVersion:
        """Raises: DatasetError ``not_found``."""
        with session(self.engine) as s:
            row = s.get(DatasetVersion, dataset_id)
        if row is None:
            raise DatasetError("not_found", f"no dataset {dataset_id!r}")
        return row

    def dataset(self, dataset_id: str) -> CapturedData:
        """The rows of a dataset version, read back from its verified artifact.

        Raises:
            DatasetError: ``not_found``.
        """
        row = self.dataset_row(dataset_id)
        return captured_data(self.store.get(row.sha256), tuple(row.devices))

    # ------------------------------------------------------------- from devices (MQTT thread)

    def on_message(self, device_id: str, message: protocol.Message) -> None:
        """A ``capture_status`` or ``upload_manifest`` from a device.

        Raises:
            ProtocolError: ``unknown_capture`` (the caller counts and drops it).
        """
        body = message.body
        capture_id = str(body["capture"])
        with self._lock:
            row = self._device_row(capture_id, device_id)
            if row.status in TERMINAL:
                self.counts["late_capture_messages"] += 1
                if message.type == "upload_manifest":  # the device still keeps it
                    self.asks.done((row.capture_id, device_id), row.status, row.reason)
                return
            if message.type == "upload_manifest":
                self._on_manifest(row, body)
            elif body["status"] in ("failed", "refused"):
                self._set(row, str(body["status"]), body.get("reason"), body.get("detail"))
            elif body["status"] == "started" and row.status == "sent":
                self._set(row, "started")
        self.sweep()

    def on_chunk(self, device_id: str, chunk: UploadChunk) -> None:
        """One upload chunk: verified against its manifest before it is written.

        Raises:
            ProtocolError: ``unexpected_chunk`` (no manifest for it; counted and dropped).
        """
        key = (chunk.capture, device_id)
        with self._lock:
            upload = self._uploads.get(key)
            if upload is None:
                raise ProtocolError("unexpected_chunk", f"no upload of {chunk.capture} in progress")
            if chunk.index in upload.received:
                self.counts["duplicate_chunks"] += 1  # a QoS 1 duplicate, or asked twice
                return
            problem = chunk_problem(upload, chunk.index, len(chunk.data))
            if problem is not None:  # dropped: asked for again if it is missing
                raise ProtocolError("bad_chunk", f"{chunk.capture}: {problem}")
            if hashlib.sha256(chunk.data).hexdigest() != upload.manifest["chunks"][chunk.index]:
                self.counts["chunks_refused"] += 1
                why = f"chunk {chunk.index} does not match its manifest's sha256"
                self._fail_upload(key, Reason.CHUNK_HASH_MISMATCH, why)
                return
            (upload.directory / str(chunk.index)).write_bytes(chunk.data)
            upload.received.add(chunk.index)
            upload.progressed(self.clock(), self.asks.quiet_s)
            self.counts["chunks_verified"] += 1
            if not upload.missing():
                self._complete(key, upload)

    @property
    def quiet_s(self) -> float:
        """Seconds without a chunk before the hub asks for the rest."""
        return self.asks.quiet_s

    def resume_uploads(self) -> None:
        """Ask devices for what their uploads lack once they have been quiet for a while:
        chunks, or the manifest of a capture that has ended; fail an upload after
        ``asks.max_asks`` asks with nothing coming."""
        now = self.clock()
        with self._lock:
            for key, upload in list(self._uploads.items()):
                if upload.next_ask > now:
                    continue
                if self.asks.exhausted(upload):
                    missing = len(upload.missing())
                    why = f"{missing} chunk(s) still missing after {upload.asks} asks"
                    self._fail_upload(key, Reason.UPLOAD_INCOMPLETE, why)
                else:
                    self.asks.chunks(key, upload, now)
            for key, ended_at in self._silent_devices():
                self.asks.manifest(key, ended_at, now)

    def _silent_devices(self) -> list[tuple[tuple[str, str], float]]:
        """(capture, device) of running captures whose upload this process has no manifest
        of (none came yet, or it came to a hub process that has since restarted), and
        when the capture ended on the device (as the hub reckons it)."""
        with session(self.engine) as s:
            rows = s.exec(
                select(Capture, CaptureDevice)
                .where(Capture.state == "running", CaptureDevice.capture_id == Capture.id)
                .where(col(CaptureDevice.status).in_(("sent", "started", "uploading")))
            ).all()
        return [
            ((c.id, d.device_id), c.created_at + _length_s(c))
            for c, d in rows
            if (c.id, d.device_id) not in self._uploads
        ]

    # ------------------------------------------------------------- internals

    def _device_row(self, capture_id: str, device_id: str) -> CaptureDevice:
        with session(self.engine) as s:
            row = s.get(CaptureDevice, (capture_id, device_id))
        if row is None:
            raise ProtocolError("unknown_capture", f"{device_id} was not asked for {capture_id}")
        return row

    def _set(
        self,
        row: CaptureDevice,
        status: str,
        reason: str | None = None,
        detail: str | None = None,
        **fields: Any,
    ) -> None:
        with session(self.engine) as s:
            fresh = s.get(CaptureDevice, (row.capture_id, row.device_id))
            assert fresh is not None
            fresh.status, fresh.reason, fresh.detail = status, reason, detail
            for k, v in fields.items():
                setattr(fresh, k, v)
            fresh.updated_at = self.clock()
            s.add(fresh)
            s.commit()
        if status in TERMINAL:
            self._finish(row.capture_id, deadline_passed=False)

    def _on_manifest(self, row: CaptureDevice, body: Mapping[str, Any]) -> None:
        key = (row.capture_id, row.device_id)
        if (upload := self._uploads.get(key)) is not None:
            # announced again: the device is back (it reconnected, or restarted)
            self.asks.chunks(key, upload, self.clock())
            return
        with session(self.engine) as s:
            capture = s.get(Capture, row.capture_id)
        assert capture is not None
        problem = manifest_problem(body, capture)
        if problem is not None:
            self._set(row, "failed", Reason.UPLOAD_INVALID.value, problem)
            return
        directory = self.staging_dir / row.capture_id / row.device_id
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        upload = self._uploads[key] = Upload(dict(body), directory, self.clock() + self.quiet_s)
        self.asks.forget(key)
        if row.status == "uploading":  # announced to a hub process that has since restarted
            self.asks.chunks(key, upload, self.clock())
        self._set(
            row,
            "uploading",
            version=int(body["version"]),
            rows=int(body["rows"]),
            labelled=int(body["labelled"]),
        )

    def _fail_upload(self, key: tuple[str, str], reason: Reason, detail: str) -> None:
        upload = self._uploads.pop(key, None)
        if upload is not None:
            shutil.rmtree(upload.directory, ignore_errors=True)
        log.warning("capture %s: upload of %s failed: %s", key[0], key[1], detail)
        self._set(self._device_row(*key), "failed", reason.value, detail)
        if upload is not None:
            self.asks.done(key, "failed", reason.value)

    def _complete(self, key: tuple[str, str], upload: Upload) -> None:
        """Every chunk verified: check the whole, parse the arrays, keep them verified."""
        m = upload.manifest
        data = upload.read()
        try:
            arrays = upload.arrays(data)
        except ValueError as e:
            self._fail_upload(key, Reason.UPLOAD_INVALID, str(e))
            return
        write_device_rows(upload.directory.parent / f"{key[1]}.npz", int(m["version"]), arrays)
        shutil.rmtree(upload.directory, ignore_errors=True)
        del self._uploads[key]
        self.counts["uploads_verified"] += 1
        self._set(self._device_row(*key), "verified", rows=int(m["rows"]))
        self.asks.done(key, "verified")

    def _finish(self, capture_id: str, *, deadline_passed: bool) -> None:
        """Once every device has an outcome (or the deadline passed): the dataset version."""
        with self._lock, session(self.engine) as s:
            capture = s.get(Capture, capture_id)
            if capture is None or capture.state != "running":
                return
            devices = list(
                s.exec(select(CaptureDevice).where(CaptureDevice.capture_id == capture_id))
            )
            pending = [d for d in devices if d.status not in TERMINAL]
            if pending and not deadline_passed:
                return
            for d in pending:
                had = self._uploads.pop((capture_id, d.device_id), None) is not None
                if had or d.status in ("started", "uploading"):  # it may keep one: delete it
                    self.asks.done((capture_id, d.device_id), "failed", "upload_incomplete")
                self.asks.forget((capture_id, d.device_id))
                d.status, d.reason = "failed", Reason.UPLOAD_INCOMPLETE.value
                d.detail = "no verified upload by the capture's deadline"
                d.updated_at = self.clock()
                s.add(d)
            verified = sorted(d.device_id for d in devices if d.status == "verified")
            capture.ended_at = self.clock()
            dataset, arrays = None, None
            if verified:
                dataset, arrays = self._store_dataset(capture, verified)
                s.add(dataset)
                capture.state, capture.dataset_id = "done", dataset.id
            else:
                capture.state, capture.reason = "failed", "no device uploaded a verified sample"
            s.add(capture)
            s.commit()
            if dataset is not None:
                s.refresh(dataset)
        shutil.rmtree(self.staging_dir / capture_id, ignore_errors=True)
        if dataset is not None and arrays is not None and self.on_dataset is not None:
            self.on_dataset(dataset, arrays)
        log.info("capture %s %s (%d device(s) verified)", capture_id, capture.state, len(verified))

    def _store_dataset(
        self, capture: Capture, devices: list[str]
    ) -> tuple[DatasetVersion, dict[str, Any]]:
        staged = [self.staging_dir / capture.id / f"{device_id}.npz" for device_id in devices]
        version, arrays = merge_device_rows(staged)
        digest = self.store.put(to_npz(arrays))
        return DatasetVersion(
            id=uuid.uuid4().hex[:16],
            model=capture.model,
            version=version,
            capture_id=capture.id,
            devices=devices,
            rows=len(arrays["x"]),
            labelled=int(np.count_nonzero(arrays["labels"] != NO_LABEL)),
            features=int(arrays["x"].shape[1]),
            sha256=digest,
            created_at=self.clock(),
        ), arrays


def _length_s(capture: Capture) -> float:
    """Seconds a capture samples for (its windows at the core's default window)."""
    if capture.duration_s is not None:
        return float(capture.duration_s)
    return (capture.windows or 0) * ASSUMED_WINDOW_S
