"""The core's whole state, as the device persists it (``state.json``, agent/store.py).

:class:`DeviceState` round-trips to the JSON object the device has always written: the
same keys in the same order (the optional ``last``, ``capture`` and ``uploads`` where
they first appeared), and keys it does not know passed through, so a file written by an older or a
newer agent loads and is written back unchanged.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, TypedDict

from agent.core.job import Job
from agent.core.phases import CoreStateError, TransitionError, Trigger, next_phase


class ModelFile(TypedDict):
    target: str  # the target's name in the signed metadata
    sha256: str
    length: int  # bytes


class InstalledModel(TypedDict):
    """A model on this device: the ``version`` serving, the ``versions`` kept on disk
    (oldest first) and their ``files`` by version (a string: JSON keys are)."""

    version: int
    versions: list[int]
    files: dict[str, ModelFile]


class LastEvent(TypedDict):
    """The latest deployment event, read back by a hub that missed it (docs/protocol.md)."""

    deployment: str
    model: str
    version: int
    stage: str
    reason: str | None
    ts: float


@dataclass
class Capture:
    """A data capture in progress (docs/capture.md)."""

    id: str
    model: str
    max_rows: int
    seed: int
    ends_at: float | None  # None: measured in windows
    windows: int | None  # telemetry windows still to close; None: measured in time
    ending: bool = False  # its end was asked for (FinishCapture), the answer not yet in

    def window_closed(self) -> None:
        if self.windows:
            self.windows -= 1

    def due(self, now: float) -> bool:
        by_time = self.ends_at is not None and now >= self.ends_at
        by_windows = self.windows is not None and self.windows <= 0
        return by_time or by_windows

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "max_rows": self.max_rows,
            "seed": self.seed,
            "ends_at": self.ends_at,
            "windows": self.windows,
            "ending": self.ending,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Capture:
        return cls(
            data["id"],
            data["model"],
            data["max_rows"],
            data["seed"],
            data["ends_at"],
            data["windows"],
            data["ending"],
        )


@dataclass
class PendingUpload:
    """A capture's upload kept on disk until the hub has every chunk (docs/capture.md)."""

    capture: str
    manifest: dict[str, Any]  # the upload_manifest body, published again on reconnect
    expires_at: float  # deleted then, if the hub never said it has an outcome
    asks: int = 0  # the hub's asks answered

    @property
    def length(self) -> int:
        return int(self.manifest["length"])

    def to_json(self) -> dict[str, Any]:
        return {
            "capture": self.capture,
            "manifest": self.manifest,
            "expires_at": self.expires_at,
            "asks": self.asks,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingUpload:
        return cls(data["capture"], data["manifest"], data["expires_at"], data["asks"])


_ALWAYS = ("models", "seq", "job", "req", "commands")  # keys a fresh state starts with


class DeviceState:
    """Installed models, counters, replay memory, and the job and capture in progress."""

    def __init__(self) -> None:
        self.models: dict[str, InstalledModel] = {}
        self.seq = 0  # the next telemetry window's sequence number
        self.req = 0  # fetch requests made, ever (request ids)
        self.job: Job | None = None
        self.commands: dict[str, float] = {}  # command id -> expiry: replay memory
        self._last: LastEvent | None = None
        self._capture: Capture | None = None
        self._uploads: dict[str, PendingUpload] = {}  # capture id -> its kept upload
        self._keys: list[str] = list(_ALWAYS)  # the file's keys, in its order
        self._other: dict[str, Any] = {}  # keys this version does not know

    @property
    def last(self) -> LastEvent | None:
        return self._last

    @last.setter
    def last(self, last: LastEvent) -> None:
        self._last = last
        self._key("last")

    @property
    def capture(self) -> Capture | None:
        return self._capture

    @capture.setter
    def capture(self, capture: Capture | None) -> None:
        self._capture = capture
        self._key("capture")

    @property
    def uploads(self) -> dict[str, PendingUpload]:
        """The uploads kept on disk, by capture id (read; change through the setters)."""
        return self._uploads

    def keep_upload(self, upload: PendingUpload) -> None:
        self._uploads[upload.capture] = upload
        self._key("uploads")

    def forget_upload(self, capture: str) -> PendingUpload | None:
        return self._uploads.pop(capture, None)

    def _key(self, key: str) -> None:
        if key not in self._keys:
            self._keys.append(key)

    def next_req(self, device_id: str) -> str:
        """A new fetch request id."""
        self.req += 1
        return f"{device_id}:{self.req}"

    def end_job(self, trigger: Trigger) -> None:
        """Forget the job: ``trigger`` gave it its outcome.

        Raises:
            CoreStateError: no job; TransitionError: ``trigger`` does not end it.
        """
        job = self.job
        if job is None:
            raise CoreStateError(f"no job to end on {trigger.value}")
        if next_phase(job.phase, trigger) is not None:
            raise TransitionError(job.phase, trigger)  # it leads on: Job.advance
        self.job = None

    # ------------------------------------------------------------- persistence

    def to_json(self) -> dict[str, Any]:
        """The state as the device saves it. Lists and dicts in it are the live ones."""
        values: dict[str, Any] = {
            "models": self.models,
            "seq": self.seq,
            "job": None if self.job is None else self.job.to_json(),
            "req": self.req,
            "commands": self.commands,
            "last": self._last,
            "capture": None if self._capture is None else self._capture.to_json(),
            "uploads": [u.to_json() for u in self._uploads.values()],
        }
        return {k: values[k] if k in values else self._other[k] for k in self._keys}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> DeviceState:
        """The state a device saved (None or empty: a fresh device). ``data`` is copied.

        Raises:
            KeyError, ValueError, TypeError: not a state this device saved.
        """
        state = cls()
        if not data:
            return state
        data = copy.deepcopy(data)
        state.models = data["models"]
        state.seq = data["seq"]
        state.req = data["req"]
        state.job = None if data["job"] is None else Job.from_json(data["job"])
        state.commands = data.get("commands", {})  # absent in files older than replay memory
        state._last = data.get("last")
        if (capture := data.get("capture")) is not None:
            state._capture = Capture.from_json(capture)
        for upload in data.get("uploads", []):
            state._uploads[upload["capture"]] = PendingUpload.from_json(upload)
        state._keys = [*data, *(["commands"] if "commands" not in data else [])]
        known = {*_ALWAYS, "last", "capture", "uploads"}
        state._other = {k: v for k, v in data.items() if k not in known}
        return state


def encode_state(state: dict[str, Any]) -> bytes:
    """The state as compact JSON: the snapshot the adapter writes (one encoding, no copy)."""
    return json.dumps(state, separators=(",", ":")).encode()
