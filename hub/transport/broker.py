"""The broker a hub uses when none is given (DESIGN §7).

Order: ``--broker URL`` if given; else a private Mosquitto started as a child process
from a generated config (when the ``mosquitto`` binary is on PATH) on the port it had at
the last start (hub/transport/local_broker.py), a free one the first time; else
the embedded pure-Python broker (amqtt) with a warning that it suits small demos only.

The generated Mosquitto config follows what we measured (DESIGN §8): queues and
in-flight windows sized for a hub that receives from thousands of devices (the default
drops QoS 1 messages past 1,000 queued), persistent sessions that expire, a packet size
cap, and a raised open-files limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import psutil

log = logging.getLogger(__name__)

MAX_PACKET_BYTES = 2 * 2**20  # bytes; chunks are <= 64 KiB, metadata batches smaller
MAX_QUEUED_MESSAGES = 200_000  # per client; the hub's subscription must never drop
MAX_INFLIGHT_MESSAGES = 100  # per client
# Bytes queued per client: bounds what one device that asks and never reads can make the
# broker hold (2.5 GB in 17 s was measured with no limit), and leaves the hub's own queue
# room for 200,000 telemetry windows of ~1 KiB while it is away (issue 11, item 2).
MAX_QUEUED_BYTES = 256 * 2**20


class BrokerError(RuntimeError):
    """The broker could not be started or reached."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False  # mqtts://: TLS with a client certificate (hub/transport/brokerconf.py)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt://host:port``, ``mqtts://host:port`` (TLS) or ``host:port``.

        Raises:
            ValueError: not a usable MQTT URL.
        """
        u = urlparse(url if "://" in url else f"mqtt://{url}")
        if u.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not u.hostname:
            raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {url!r}")
        tls = u.scheme in ("mqtts", "ssl")
        return cls(u.hostname, u.port or (8883 if tls else 1883), tls)


@dataclass(frozen=True)
class TlsIdentity:
    """A client's TLS files for an ``mqtts://`` broker: CA bundle, certificate, key."""

    ca: Path
    cert: Path
    key: Path

    def __post_init__(self) -> None:
        missing = [str(p) for p in (self.ca, self.cert, self.key) if not p.is_file()]
        if missing:
            raise ValueError(f"TLS files missing: {', '.join(missing)}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mosquitto_config(
    port: int, data_dir: Path, host: str = "127.0.0.1", *, persistence: bool = False
) -> str:
    """A development config: plain TCP on loopback, anonymous clients.

    ``persistence``: sessions, subscriptions and queued messages survive a restart (saved
    in ``data_dir`` at shutdown), as on a production broker.
    """
    keep = [f"persistence true\npersistence_location {data_dir}/"] if persistence else []
    return "\n".join(
        [
            "per_listener_settings false",
            f"listener {port} {host}",
            "allow_anonymous true",
            # Started as root, Mosquitto would switch to the user "mosquitto", who cannot
            # write its log or database in a private data dir: stay who started it.
            f"user {getpass.getuser()}",
            *(keep or ["persistence false"]),
            f"max_packet_size {MAX_PACKET_BYTES}",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            f"max_queued_bytes {MAX_QUEUED_BYTES}",
            f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
            "persistent_client_expiration 1d",
            "set_tcp_nodelay true",
            "max_keepalive 300",
            f"log_dest file {data_dir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ]
    )


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing listens on {host}:{port} after {timeout}s") from e
            time.sleep(0.05)


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port``."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


class Mosquitto:
    """A private Mosquitto child process on a free loopback port."""

    def __init__(
        self, data_dir: Path | None = None, port: int | None = None, *, persistence: bool = False
    ) -> None:
        self.persistence = persistence
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="ef-mosquitto-"))
        self.port = port or free_port()
        self.address = BrokerAddress("127.0.0.1", self.port)
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("mosquitto") is not None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = shutil.which("mosquitto")
        if exe is None:
            raise BrokerError("the mosquitto binary is not on PATH")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(mosquitto_config(self.port, self.data_dir, persistence=self.persistence))
        self._proc = subprocess.Popen(
            [exe, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=raise_nofile,
        )
        # Our process must be the one listening: a free port can be taken by someone else
        # between free_port() and the bind, and then a connect would reach their broker.
        deadline = time.monotonic() + timeout
        while not listens(self._proc.pid, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                err = b""
                if self._proc.poll() is not None and self._proc.stderr:
                    err = self._proc.stderr.read()
                self.stop()
                raise BrokerError(
                    f"mosquitto did not start on port {self.port}: "
                    f"{err.decode(errors='replace') or 'not listening'}"
                )
            time.sleep(0.05)
        log.info("private mosquitto on %s (pid %d)", self.address.url, self._proc.pid)
        return self

    @property
    def pid(self) -> int:
        """The running broker's process id.

        Raises:
            RuntimeError: it is not running.
        """
        if self._proc is None:
            raise RuntimeError("mosquitto is not running")
        return self._proc.pid

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop and start again on the same port (for broker-restart tests)."""
        own, self._own_dir = self._own_dir, False
        self.stop()
        self._own_dir = own
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBroker:
    """amqtt in a background thread: for small demos where Mosquitto is missing.

    amqtt is 12–16x slower than Mosquitto and never enforces keepalive (a frozen
    client's Last Will never fires): DESIGN §8.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = BrokerAddress("127.0.0.1", self.port)
        self._thread: threading.Thread | None = None
        self._stop: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()

        async def serve() -> None:
            broker = Broker(config, loop=loop)
            await broker.start()
            await stop.wait()
            await broker.shutdown()

        def run() -> None:
            loop.run_until_complete(serve())

        self._stop = (loop, stop)
        self._thread = threading.Thread(target=run, name="amqtt", daemon=True)
        self._thread.start()
        wait_for_port("127.0.0.1", self.port, timeout)
        log.warning(
            "mosquitto not found: using the embedded pure-Python broker on %s; "
            "it suits small demos only (install mosquitto for anything more)",
            self.address.url,
        )
        return self

    def stop(self) -> None:
        if self._thread is None or self._stop is None:
            return
        loop, stop = self._stop
        loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)
        self._thread = None


def start_local_broker(
    data_dir: Path | None = None, port: int | None = None
) -> Mosquitto | EmbeddedBroker:
    """A private Mosquitto if the binary is here, else the embedded broker, on ``port``
    (default: a free one; hub/transport/local_broker.py keeps the hub's across starts)."""
    if Mosquitto.available():
        return Mosquitto(data_dir, port).start()
    return EmbeddedBroker(port).start()
