"""The hub's broker across restarts: which one it used last (``data_dir/broker.json``).

A device's ``agent.toml`` names the broker it enrolled with, so a private broker keeps its
port from one start to the next: the one of the last start (or ``--broker-port``), a
free one only the first time. If the port is taken by another program, the hub says so
and how to choose another rather than moving the fleet's broker silently. A private
broker left running by a hub that was killed (SIGKILL: no shutdown code) is recognised by
its process id and configuration file and stopped first.

:meth:`BrokerRecord.forgets_devices` tells whether devices' presence is stale: a private
broker starts without state (no sessions, no Last Wills), and another broker URL is
another broker; then the hub marks every device it has not heard from since ``unknown``
(hub/fleet/progress.py ``forget_presence``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from hub.transport.broker import BrokerError, EmbeddedBroker, Mosquitto, start_local_broker

__all__ = [
    "BROKER_FILE",
    "BrokerPortTaken",
    "BrokerRecord",
    "read_record",
    "start_private_broker",
    "write_record",
]

log = logging.getLogger(__name__)

BROKER_FILE = "broker.json"  # in the hub's data directory
ORPHAN_STOP_S = 5.0  # seconds a broker left by a killed hub has to exit


class BrokerPortTaken(BrokerError):
    """The private broker's port is held by another program."""

    def __init__(self, port: int, given: bool) -> None:
        why = "given with --broker-port" if given else "the private broker's port at the last start"
        super().__init__(
            f"port {port} ({why}) is taken by another program: stop it, or give the private"
            " broker another port with --broker-port N (enrolled devices name the old one"
            " in their agent.toml)"
        )
        self.port = port


@dataclass(frozen=True)
class BrokerRecord:
    """The broker of one start of the hub."""

    url: str
    private: bool  # started by the hub (without persistence: it starts with no state)
    pid: int | None = None  # the private broker's process; None for the embedded one

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def forgets_devices(self, previous: BrokerRecord | None) -> bool:
        """Whether devices' presence from before this start cannot be trusted."""
        return self.private or previous is None or previous.url != self.url


def read_record(data_dir: Path) -> BrokerRecord | None:
    """The broker of the last start, if there was one and its file can be read."""
    path = data_dir / BROKER_FILE
    try:
        fields = json.loads(path.read_text())
        return BrokerRecord(str(fields["url"]), bool(fields["private"]), fields.get("pid"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring %s: %s", path, e)
        return None


def write_record(data_dir: Path, record: BrokerRecord) -> None:
    path = data_dir / BROKER_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(path)


def start_private_broker(
    data_dir: Path, port: int | None, previous: BrokerRecord | None
) -> Mosquitto | EmbeddedBroker:
    """Start the hub's own broker on ``port``, else the last start's, else a free one.

    Raises:
        BrokerPortTaken: the port is held by another program.
        BrokerError: the broker did not start.
    """
    kept = previous.port if previous is not None and previous.private else None
    chosen = port or kept
    if chosen is not None:
        if previous is not None and previous.pid is not None:
            _stop_orphan(previous.pid, data_dir / "broker" / "mosquitto.conf")
        if not _port_free(chosen):
            raise BrokerPortTaken(chosen, given=port is not None)
    return start_local_broker(data_dir / "broker", chosen)


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Mosquitto binds
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _stop_orphan(pid: int, conf: Path) -> None:
    """Stop the Mosquitto a killed hub left running: the process ``pid``, if it is still a
    mosquitto started with our configuration file (a reused pid is left alone)."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if "mosquitto" not in proc.name() or str(conf) not in proc.cmdline():
            return
        log.warning("stopping the private broker a previous hub left running (pid %d)", pid)
        proc.terminate()
        try:
            proc.wait(ORPHAN_STOP_S)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(ORPHAN_STOP_S)
