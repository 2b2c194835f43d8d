"""What goes into the agent core (events) and what comes out of it (actions).

The core (agent/core.py) is sans-I/O: it never touches sockets, files, clocks or the
runtime. An adapter (agent/device.py) feeds it events, carries out the actions it
returns, and feeds the results back as events. Times are seconds since the epoch,
always passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.telemetry import InferenceStats
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
    """Time passes. ``stats``: inferences recorded since the last tick."""

    now: float
    stats: InferenceStats | None = None
    cpu_pct: float | None = None
    rss_bytes: int | None = None


@dataclass(frozen=True)
class MetadataVerified:
    req: str
    target: VerifiedTarget
    root_version: int
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


Event = Connected | MessageArrived | Tick | MetadataVerified | Refused | StagedChunks | Done

# ------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class PersistState:
    """Write the core's state; ``durable``: fsync before going on (activation, rollback)."""

    state: Mapping[str, Any]
    durable: bool = False


@dataclass(frozen=True)
class VerifyMetadata:
    """Verify TUF metadata that arrived over MQTT; answer MetadataVerified or Refused."""

    req: str
    files: Mapping[str, bytes]
    target_name: str


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


Action = (
    Publish
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
)


@dataclass
class Outbox:
    """Collects the actions one event produces, in order."""

    actions: list[Action] = field(default_factory=list)

    def add(self, action: Action) -> None:
        self.actions.append(action)
