"""A real ``edgefleet agent run`` process for tests: its config, its log, its signals.

The device is enrolled the short way: the hub's TUF root is pinned in its state
directory (what ``edgefleet agent enrol`` does after asking the hub), and it talks plain
MQTT to the broker the test names, so a test needs no hub to watch the process itself.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.store import DeviceStore
from shared.trust import DeviceVerifier

ROOT = Path(__file__).resolve().parent.parent


class AgentProcess:
    """One agent daemon in a child process; its stderr (the log) goes to a file."""

    def __init__(
        self,
        work: Path,
        broker_url: str,
        pinned_root: bytes,
        *,
        device_id: str = "agent-1",
        endpoint: str = "",
        window_s: float = 1.0,
        verbose: bool = False,
    ) -> None:
        self.work = work
        self.state_dir = work / "state"
        self.config = work / "agent.toml"
        self.log_path = work / "agent.log"
        self.verbose = verbose
        work.mkdir(parents=True, exist_ok=True)
        DeviceVerifier(DeviceStore(self.state_dir).trust_dir, pinned_root)  # pin the root
        self.config.write_text(
            f'device_id = "{device_id}"\ndevice_class = "test"\nbroker = "{broker_url}"\n'
            f'state_dir = "{self.state_dir}"\nendpoint = "{endpoint}"\nwindow_s = {window_s}\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [sys.executable, "-m", "edgefleet.cli"]
        if self.verbose:
            cmd.append("-v")
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*cmd, "agent", "run", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.work,
                env=env,
            )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float) -> float:
        """Seconds until ``text`` is in the log; fails the test after ``timeout``."""
        t0 = time.monotonic()
        while text not in self.log:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the agent exited ({self.proc.returncode}):\n{self.log}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"no {text!r} in the agent's log in {timeout} s:\n{self.log}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent still runs after {timeout} s:\n{self.log}") from None

    def get(self, host_port: str, path: str) -> tuple[int, dict[str, Any]]:
        host, _, port = host_port.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def kill(self) -> None:
        """Clean-up: SIGKILL if it still runs (only this test's own child)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
