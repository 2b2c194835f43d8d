"""The stage of a rehearsal: a private Mosquitto on a free port and the hub as a child process.

``edgefleet hub serve --dev`` runs as a real process so that killing it (a ``hub_restart``
fault) is real: SIGKILL, no shutdown code. :class:`Stage` provides what the simulator's
process faults need (:class:`simulator.faults.Processes`) without the simulator knowing
how the hub is started. edgefleet/rehearsal.py sets it up for a scenario.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgefleet.client import HubClient
from hub.transport.broker import Mosquitto, free_port
from simulator.scenario import ScenarioError

__all__ = ["HubProcess", "Stage"]

HUB_START_TIMEOUT_S = 60.0  # s: from spawn to an answering /health


class HubProcess:
    """``edgefleet hub serve --dev`` as a child process, so that SIGKILL is real."""

    def __init__(self, data_dir: Path, broker_url: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.broker_url = broker_url
        self.port = port or free_port()
        self.log_path = data_dir.parent / "hub.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = HUB_START_TIMEOUT_S) -> HubProcess:
        """Spawn the hub and wait until its API answers.

        Raises:
            ScenarioError: it exited or did not answer in time (with its log's last line).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "edgefleet.cli", "hub", "serve", "--dev"]
        cmd += ["--data", str(self.data_dir), "--broker", self.broker_url]
        cmd += ["--port", str(self.port)]
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        with HubClient(self.url, timeout=2.0) as probe:
            while True:
                if self._proc.poll() is not None:
                    raise ScenarioError(f"the hub exited at start: {self._log_tail()}")
                with contextlib.suppress(Exception):
                    probe.health()
                    return self
                if time.monotonic() > deadline:
                    self.stop()
                    raise ScenarioError(f"the hub did not answer in {timeout_s:g} s")
                time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        """The hub process's id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as after a power cut or the OOM killer."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"


class Stage:
    """The scenario's processes: a private Mosquitto and the hub."""

    def __init__(self, work_dir: Path, persistent_broker: bool = False) -> None:
        self.broker = Mosquitto(work_dir / "broker", persistence=persistent_broker)
        self.hub: HubProcess | None = None
        self.work_dir = work_dir

    def start(self) -> Stage:
        if not Mosquitto.available():
            raise ScenarioError("the mosquitto binary is not on PATH (apt-get install mosquitto)")
        self.broker.start()
        self.hub = HubProcess(self.work_dir / "hub", self.broker.address.url).start()
        return self

    def stop(self) -> None:
        if self.hub is not None:
            self.hub.stop()
        self.broker.stop()

    # Processes (simulator/faults.py)
    def restart_broker(self, down_s: float) -> None:
        self.broker.restart(down_s)

    def kill_hub(self) -> None:
        assert self.hub is not None
        self.hub.kill()

    def start_hub(self) -> None:
        assert self.hub is not None
        self.hub.start()
