"""What a simulated fleet is: :class:`FleetConfig`, the settings of simulator/fleet.py.

How many devices, on which broker, of which classes and runtimes, how fast they infer and
report, where their spools live, and whether they play a dataset's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.spool import DEFAULT_MAX_BYTES
from simulator.rows import RowSource

__all__ = ["FleetConfig"]


@dataclass(frozen=True)
class FleetConfig:
    devices: int
    host: str
    port: int
    work_dir: Path
    pinned_root: bytes
    id_prefix: str = "sim"
    first_index: int = 0
    device_class: str = "sim-gateway"
    # (class, count) in index order from index 0; devices beyond their sum: device_class
    device_classes: tuple[tuple[str, int], ...] = ()
    # (class, runtime) for classes whose devices run a runtime other than onnxruntime
    # (``tflite``: LiteRT, agent/litert.py); they install that runtime's artefact
    class_runtimes: tuple[tuple[str, str], ...] = ()
    seed: int = 1
    rows_per_s: float = 10.0  # inference rate of each device
    batch: int = 5  # rows per inference call
    tick_s: float = 1.0  # how often each device closes a stats tick
    window_s: float = 5.0  # telemetry window
    # idle windows coalesce into one zero window this often (agent/core/windows.py);
    # None: every 30 windows, as an agent's 300 s of 10 s windows
    heartbeat_s: float | None = None
    fetch_timeout_s: float = 10.0
    fanout: bool = True  # devices read the fan-out topics deploy commands name
    # telemetry/drift spools (agent/spool.py): one directory per device under spool_dir
    # (e.g. on /dev/shm), or under each device's state directory when None
    spool_dir: Path | None = None
    spool_max_bytes: int = DEFAULT_MAX_BYTES  # bytes per device
    # Spooled windows replayed per second after an outage's burst; None: the agent's pace
    # scaled by how much faster than an agent's 10 s windows these close (time runs
    # faster here, and the hub's ingest budget is scaled alike where a test needs it)
    spool_replay_per_s: float | None = None
    # Infer on these rows of a dataset file (simulator/rows.py) instead of the built-in
    # sensor stream; each device plays them in its own seeded order.
    rows: RowSource | None = None
    row_passes: int | None = None  # with rows: play each row this many times, then stop
    late_label_share: float = 0.0  # with rows: share whose label comes later, by id
    late_label_after_s: float = 2.0  # with rows: how much later (s)

    def __post_init__(self) -> None:
        if not 0.0 <= self.late_label_share <= 1.0:
            raise ValueError(f"late_label_share must be within 0..1, got {self.late_label_share}")
        if self.late_label_after_s < 0:
            raise ValueError(f"late_label_after_s must be >= 0, got {self.late_label_after_s}")
        if self.row_passes is not None and self.row_passes < 1:
            raise ValueError(f"row_passes must be >= 1, got {self.row_passes}")

    def runtime_of(self, device_class: str) -> str:
        """The runtime the devices of ``device_class`` run models with."""
        return dict(self.class_runtimes).get(device_class, "onnxruntime")

    def class_of(self, index: int) -> str:
        """The device class of the device with this (absolute) index."""
        n = index
        for name, count in self.device_classes:
            if n < count:
                return name
            n -= count
        return self.device_class
