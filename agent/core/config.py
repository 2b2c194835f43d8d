"""The core's configuration and the limits it keeps."""

from __future__ import annotations

from dataclasses import dataclass

AGENT_VERSION = "0.1.0"
KEEP_VERSIONS = 2  # active + previous, kept on disk for rollback
MAX_HELD_COMMANDS = 16  # commands waiting for one trust refresh, at most


@dataclass(frozen=True)
class CoreConfig:
    device_id: str
    device_class: str
    runtime: str = "onnxruntime"
    agent_version: str = AGENT_VERSION
    window_s: float = 10.0  # telemetry window
    # A model's windows with nothing in them coalesce: one zero window (a heartbeat)
    # covers them at most this often (agent/core/windows.py). <= window_s: every window
    heartbeat_s: float = 300.0
    chunk_window: int = 8  # chunks requested and not yet received, at most
    # no answer for this long: ask again (until a round trip is measured: then the
    # timeout follows it, agent/core/roundtrip.py)
    fetch_timeout_s: float = 10.0
    # no fan-out chunk for this long: fetch the missing ones individually (longer than
    # the hub's wait for stragglers plus a round, hub/transport/fanout.py)
    fan_wait_s: float = 15.0
    # no fan-out chunk yet for this download: wait this long for its first round. Rounds
    # start on the hub's view of who is ready, which lags at scale: giving up after
    # fan_wait_s sent 6,036 of 10,000 devices to fetch 393,299 chunks one by one
    # (docs/rollouts.md), loading the hub that was to start their round
    fan_first_wait_s: float = 60.0
    fanout: bool = True  # reads the fan-out topics deploy commands name (its adapter can)
    max_fetch_retries: int = 6  # then give up with fetch_timeout
    max_chunk_failures: int = 3  # one chunk failing its hash this often: give up
    max_probation_wait: float = 10.0  # probation_s multiples to wait for enough traffic
    max_remembered_commands: int = 4096  # live command ids kept for replay detection
    # MiB all the device's loaded models may take together (agent/core/budget.py); its
    # class's memory_budget_mb. None: no budget is checked
    memory_budget_mb: float | None = None
    # Capture uploads kept on disk until the hub has them all (docs/capture.md): all of
    # them together at most this many bytes; a sample that does not fit is refused
    upload_disk_bytes: int = 32 * 2**20  # bytes (two uploads of the protocol's largest)
    upload_keep_s: float = 6 * 3600.0  # seconds an upload is kept without the hub's word
    max_upload_asks: int = 32  # the hub's asks answered per upload, at most
