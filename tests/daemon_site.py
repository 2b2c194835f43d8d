"""Agent daemons enrolled through a real hub's API and run on threads: the device side of
the tests that stand up a TLS site (a hub, its API, a TLS Mosquitto; tests/test_enrolment.py,
tests/test_live_revocation.py, tests/test_renewal_fleet.py)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.daemon import AgentConfig, AgentDaemon, enrol


def enrol_device(hub_url: str, tmp: Path, device_id: str, token: str, **fields: Any) -> AgentConfig:
    """Enrol ``device_id`` with ``token`` as an operator would (`agent enrol`), state under
    ``tmp/device_id``; its config with no local endpoint and ``fields`` replaced."""
    path = tmp / f"{device_id}.toml"
    enrol(
        hub_url=hub_url,
        token=token,
        device_id=device_id,
        device_class="generic-linux",
        state_dir=tmp / device_id,
        config_out=path,
    )
    return replace(AgentConfig.load(path), endpoint="", **fields)


def run_daemon(config: AgentConfig, running: list[AgentDaemon]) -> AgentDaemon:
    """Start a daemon for ``config`` on a thread of its own; it joins ``running``."""
    daemon = AgentDaemon(config)
    daemon.start()
    threading.Thread(target=daemon.run_forever, daemon=True).start()
    running.append(daemon)
    return daemon


def stop_daemon(daemon: AgentDaemon, running: list[AgentDaemon]) -> None:
    daemon.stop()
    running.remove(daemon)
