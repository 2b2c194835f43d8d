"""The agent core: a sans-I/O state machine for one device (DESIGN §5).

``AgentCore.handle(event) -> list[Action]``. It follows deploy and rollback commands
along the firm update path::

    receive deploy -> fetch metadata -> verify (TUF) -> download chunks, each checked
    against its signed sha256, bitmap persisted -> verify whole file -> stage ->
    health check -> atomic activate -> probation -> healthy | rolled back

reports each step on ``events``, keeps a retained ``state``, closes telemetry windows,
and never trusts what arrives: bad messages are counted and dropped.

Its whole state (:class:`~agent.core.state.DeviceState`) is saved as JSON through the
adapter (``PersistState``), so a device that restarts mid-download resumes where it was.
This module only dispatches; each idea has its module:

- :mod:`agent.core.phases`: the job's phases and the one table of moves between them
- :mod:`agent.core.job`, :mod:`agent.core.state`: the persisted state, typed
- :mod:`agent.core.commands`: signed commands, replay memory, the trust refresh
- :mod:`agent.core.update`, :mod:`agent.core.download`, :mod:`agent.core.install`:
  the deployment job
- :mod:`agent.core.capture`: data capture; :mod:`agent.core.windows`: telemetry windows
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from agent.core.capture import Captures
from agent.core.commands import Commands
from agent.core.config import CoreConfig
from agent.core.context import CoreContext
from agent.core.state import DeviceState, InstalledModel
from agent.core.update import Updater
from agent.core.windows import TelemetryWindows
from agent.events import (
    Action,
    CaptureEnded,
    Connected,
    Done,
    Event,
    MessageArrived,
    MetadataVerified,
    Outbox,
    Refused,
    StagedChunks,
    Tick,
    TrustRefreshed,
    UploadLost,
)
from shared import protocol
from shared.director import DirectorKeys
from shared.protocol import ProtocolError


class AgentCore:
    """One device's update, rollback, capture and telemetry logic. Not thread-safe."""

    def __init__(
        self,
        config: CoreConfig,
        state: dict[str, Any] | None = None,
        *,
        root_version: int = 1,
        director_keys: DirectorKeys | None = None,
    ):
        """A core for ``config``, resuming from a saved ``state`` (the JSON the adapter
        wrote; None: a fresh device).

        Raises:
            KeyError, ValueError, TypeError: ``state`` is not a state this device saved.
        """
        self._ctx = CoreContext(
            config, DeviceState.from_json(state), root_version, director_keys or DirectorKeys({})
        )
        self._updater = Updater(self._ctx)
        self._captures = Captures(self._ctx)
        self._commands = Commands(self._ctx, self._updater, self._captures)
        self._windows = TelemetryWindows(self._ctx)

    # ----------------------------------------------------------------- the entry point

    def handle(self, event: Event) -> list[Action]:
        out = Outbox()
        if isinstance(event, MessageArrived):
            self._on_message(event, out)
        elif isinstance(event, Tick):
            self._on_tick(event, out)
        elif isinstance(event, Connected):
            self._ctx.publish_state(out, event.now)
            self._updater.on_connected(event.now, out)
            self._captures.uploads.on_connected(event.now, out)
        elif isinstance(event, MetadataVerified):
            self._updater.on_metadata(event, out)
        elif isinstance(event, TrustRefreshed):
            self._commands.on_trust_refreshed(event, out)
        elif isinstance(event, StagedChunks):
            self._updater.on_staged_chunks(event, out)
        elif isinstance(event, Done):
            self._updater.on_done(event, out)
        elif isinstance(event, Refused):
            self._on_refused(event, out)
        elif isinstance(event, CaptureEnded):
            self._captures.on_ended(event, out)
        elif isinstance(event, UploadLost):
            self._captures.uploads.on_lost(event.capture, event.detail, event.now, out)
        self._updater.start_waiting(event.now, out)  # a deploy of another model waited
        return out.actions

    def _on_message(self, ev: MessageArrived, out: Outbox) -> None:
        if ev.kind == "blob":
            try:
                blob = protocol.decode_blob(ev.payload)
            except ProtocolError as e:
                self._ctx.drop(e.reason, e.detail)
                return
            if not self._commands.on_blob(blob, ev.now, out):
                self._updater.on_blob(blob, ev.now, out)
        elif ev.kind == "cmd":
            self._commands.on_command(ev.payload, ev.now, out)
        else:
            self._ctx.drop("unexpected_topic", ev.kind)

    def _on_tick(self, ev: Tick, out: Outbox) -> None:
        self._windows.on_tick(ev, out)
        self._commands.check_timeout(out, ev.now)
        self._captures.check(ev.now, out)
        self._updater.on_tick(ev, out)

    def _on_refused(self, ev: Refused, out: Outbox) -> None:
        if ev.step == "trust":
            self._commands.fail_held(out, ev.reason, ev.detail, ev.now)
        else:
            self._updater.on_refused(ev, out)

    # ----------------------------------------------------------------- for readers

    @property
    def config(self) -> CoreConfig:
        return self._ctx.config

    @config.setter
    def config(self, config: CoreConfig) -> None:
        """Change the configuration (a device whose runtime changed, in tests)."""
        self._ctx.config = config

    @property
    def state(self) -> dict[str, Any]:
        """The whole state as the device saves it (JSON-able; read it, do not change it)."""
        return self._ctx.state.to_json()

    @property
    def job(self) -> dict[str, Any] | None:
        """The deployment job in progress, as saved (``phase``, ``have``, ...), or None."""
        job = self._ctx.state.job
        return None if job is None else job.to_json()

    @property
    def waiting(self) -> list[dict[str, Any]]:
        """Deploys of other models waiting for the job in progress (``deployment``,
        ``model``, ``version``), oldest first."""
        return [
            {"deployment": r.deployment, "model": r.model, "version": r.version}
            for r in self._updater.waiting
        ]

    @property
    def capture(self) -> dict[str, Any] | None:
        """The capture in progress (docs/capture.md), as saved, or None."""
        capture = self._ctx.state.capture
        return None if capture is None else capture.to_json()

    @property
    def uploads(self) -> dict[str, dict[str, Any]]:
        """Capture uploads kept on disk until the hub has them all, by capture id."""
        return {c: u.to_json() for c, u in self._ctx.state.uploads.items()}

    def installed(self, model: str) -> InstalledModel | None:
        """The installed entry of ``model``: active ``version``, ``versions`` kept on disk
        (oldest first) and ``files`` {version: {target, sha256, length}}."""
        return self._ctx.state.models.get(model)

    def state_message(self, now: float, status: str = "online") -> bytes:
        """The retained ``state`` message (``offline``: the Last Will, naming no models)."""
        return self._ctx.state_message(now, status)

    @property
    def root_version(self) -> int:
        """The version of the newest trusted root this core knows."""
        return self._ctx.root_version

    @property
    def dropped(self) -> Counter[str]:
        """Bad input counted and dropped, by reason."""
        return self._ctx.dropped

    @property
    def counts(self) -> Counter[str]:
        """How chunks came: ``fan_chunks`` (from a fan-out), ``fetched_chunks`` (asked
        for), ``chunks_asked``, ``fan_ignored`` (a fan-out chunk it could not use)."""
        return self._ctx.counts

    @property
    def fetch_timeout_s(self) -> float:
        """The fetch time-out now (it follows the observed round trip)."""
        return self._updater.download.rtt.timeout()

    @property
    def spool_dropped(self) -> int | None:
        """Windows the adapter's spool dropped, ever: reported in each telemetry body."""
        return self._windows.spool_dropped

    @spool_dropped.setter
    def spool_dropped(self, count: int | None) -> None:
        self._windows.spool_dropped = count
