"""What goes into the agent core (events) and what comes out of it (actions).

The core (agent/core/) is sans-I/O: it never touches sockets, files, clocks or the
runtime. An adapter (agent/device.py) feeds it events, carries out the actions it
returns, and feeds the results back as events. Times are seconds since the epoch,
always passed in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.drift import ModelSketch
from agent.telemetry import InferenceStats
from shared.director import DirectorKeys
from shared.reasons import Reason
from shared.trust import VerifiedTarget

# ------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Connected:
    """The MQTT session is up (first connect or reconnect)."""

    now: float


@dataclass(frozen=True)
class MessageArrived:
    """A message on one of this device's topics (``cmd`` or ``blob``)."""

    kind: str
    payload: bytes
    now: float


@dataclass(frozen=True)
class Tick:
    """Time passes. ``stats``: inferences recorded since the last tick; ``drift``: the
    drift sketch of their rows (agent/drift.py), None when nothing was sketched.

    A device serving several models gives each model's figures apart: ``model_stats``
    (model -> its inferences) and ``drifts`` (one sketch per model); then ``stats`` is
    unused. Without ``model_stats``, ``stats`` counts for the device's first model.
    """

    now: float
    stats: InferenceStats | None = None
    cpu_pct: float | None = None
    rss_bytes: int | None = None
    drift: ModelSketch | None = None
    model_stats: Mapping[str, InferenceStats] | None = None
    drifts: tuple[ModelSketch, ...] = ()

    def stats_of(self, model: str, first: str | None) -> InferenceStats | None:
        """The inferences of ``model`` (``first``: the device's first model, which the
        untagged ``stats`` count for)."""
        if self.model_stats is not None:
            return self.model_stats.get(model)
        return self.stats if model == first else None

    def sketches(self) -> tuple[ModelSketch, ...]:
        """Every drift sketch of this tick."""
        return self.drifts if self.drift is None else (self.drift, *self.drifts)


@dataclass(frozen=True)
class MetadataVerified:
    req: str
    target: VerifiedTarget
    root_version: int
    now: float
    director_keys: DirectorKeys | None = None  # as the (maybe newer) trusted root lists them
    # version and expiry (epoch s) of the top-level targets now trusted (ADR 0037)
    trusted_targets: tuple[int, float] | None = None


@dataclass(frozen=True)
class TrustRefreshed:
    """Staged metadata verified with no target asked for: the root chain was walked."""

    req: str
    root_version: int
    director_keys: DirectorKeys
    now: float


@dataclass(frozen=True)
class Refused:
    """An action failed for a reason the device reports (verification, health, I/O)."""

    step: str  # "metadata" | "file" | "health" | "activate" | "rollback" | "staged"
    reason: Reason
    detail: str
    now: float


@dataclass(frozen=True)
class StagedChunks:
    """Which chunks already on disk still match their hashes (resume after restart)."""

    valid: frozenset[int]
    now: float


@dataclass(frozen=True)
class Done:
    """An action that needs no payload succeeded (``file``, ``health``, ``activate``, ...)."""

    step: str
    now: float
    detail: str = ""


@dataclass(frozen=True)
class CaptureEnded:
    """The adapter's answer to FinishCapture: the sample's upload bytes (docs/capture.md).

    ``data`` is None when no row of the model was seen (nothing to upload).
    """

    capture: str
    now: float
    data: bytes | None = None
    schema: tuple[Mapping[str, Any], ...] = ()
    version: int = 0
    rows: int = 0
    labelled: int = 0


@dataclass(frozen=True)
class UploadLost:
    """The adapter cannot read a kept upload any more (its file is gone or unreadable)."""

    capture: str
    detail: str
    now: float


Event = (
    Connected
    | MessageArrived
    | Tick
    | MetadataVerified
    | TrustRefreshed
    | Refused
    | StagedChunks
    | Done
    | CaptureEnded
    | UploadLost
)

# ------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Subscribe:
    """Read ``topic`` too (a fan-out topic a deploy command named), QoS ``qos``."""

    topic: str
    qos: int = 0


@dataclass(frozen=True)
class Unsubscribe:
    """Stop reading ``topic``."""

    topic: str


@dataclass(frozen=True)
class PersistState:
    """Write the core's state, already encoded as JSON (a snapshot: the core goes on
    changing its state); ``durable``: fsync before going on (activation, rollback)."""

    data: bytes
    durable: bool = False

    @property
    def state(self) -> dict[str, Any]:
        """The snapshot, decoded (for tests and tools)."""
        decoded: dict[str, Any] = json.loads(self.data)
        return decoded


@dataclass(frozen=True)
class VerifyMetadata:
    """Verify TUF metadata that arrived over MQTT; answer MetadataVerified or Refused."""

    req: str
    files: Mapping[str, bytes]
    target_name: str | None  # None: only walk the root chain (answer TrustRefreshed)


@dataclass(frozen=True)
class CheckStagedChunks:
    """Re-hash chunks a previous run wrote; answer StagedChunks."""

    target: VerifiedTarget
    chunk_size: int
    chunk_hashes: tuple[str, ...]
    claimed: frozenset[int]


@dataclass(frozen=True)
class WriteChunk:
    """Write one verified chunk into the staging file of ``target``."""

    target: VerifiedTarget
    offset: int
    data: bytes


@dataclass(frozen=True)
class VerifyAndStage:
    """Verify the whole staged file (length, sha256) and move it beside the active model.

    Answer Done("file") or Refused("file", ...).
    """

    model: str
    version: int
    target: VerifiedTarget


@dataclass(frozen=True)
class RunHealthCheck:
    """Load the staged model and run the manifest's check; Done("health") or Refused."""

    model: str
    version: int
    target: VerifiedTarget


@dataclass(frozen=True)
class Activate:
    """Atomically make ``version`` the active model and load it; Done("activate")."""

    model: str
    version: int
    target: VerifiedTarget


@dataclass(frozen=True)
class RollBack:
    """Atomically make the kept ``to_version`` active again; Done("rollback")."""

    model: str
    to_version: int


@dataclass(frozen=True)
class Discard:
    """Remove the staging file and any staged (never activated) copy of a version."""

    model: str
    version: int | None
    target: VerifiedTarget | None


@dataclass(frozen=True)
class Prune:
    """Delete model versions on disk other than ``keep``."""

    model: str
    keep: tuple[int, ...]


@dataclass(frozen=True)
class StartCapture:
    """Start a reservoir sample of ``model``'s rows (agent/capture.py)."""

    capture: str
    model: str
    max_rows: int
    seed: int


@dataclass(frozen=True)
class FinishCapture:
    """Stop the capture and answer CaptureEnded with its sample."""

    capture: str


@dataclass(frozen=True)
class KeepUpload:
    """Write a capture's upload bytes to disk, kept until the hub has them all."""

    capture: str
    data: bytes


@dataclass(frozen=True)
class SendUploadChunks:
    """Read chunks ``indices`` of the kept upload and publish each on ``topic`` (QoS 1);
    answer UploadLost if the file is gone."""

    capture: str
    topic: str
    chunk_size: int
    length: int  # bytes of the whole upload: the file must have exactly these
    indices: tuple[int, ...]


@dataclass(frozen=True)
class DropUpload:
    """Delete the kept upload of ``capture`` (the hub has an outcome, or it expired)."""

    capture: str


Action = (
    Publish
    | Subscribe
    | Unsubscribe
    | PersistState
    | VerifyMetadata
    | CheckStagedChunks
    | WriteChunk
    | VerifyAndStage
    | RunHealthCheck
    | Activate
    | RollBack
    | Discard
    | Prune
    | StartCapture
    | FinishCapture
    | KeepUpload
    | SendUploadChunks
    | DropUpload
)


@dataclass
class Outbox:
    """Collects the actions one event produces, in order."""

    actions: list[Action] = field(default_factory=list)

    def add(self, action: Action) -> None:
        self.actions.append(action)
