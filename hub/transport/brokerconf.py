"""A production Mosquitto config: TLS, client certificates, a per-device ACL, a CRL.

:func:`write_broker_config` writes everything Mosquitto 2.0 needs into one directory,
from the hub's CA (hub/trust/pki.py)::

    mosquitto.conf   the config: ``mosquitto -c DIR/mosquitto.conf``
    acl              device {id} touches only its own topics and reads the fan-out
                     topics; the hub all of them
    ca.crt           the CA that issues every client certificate
    server.crt/.key  the broker's TLS server certificate (SAN: the server names)
    crl.pem          revoked client certificates (rewrite + SIGHUP: :func:`reload_crl`)
    dynamic-security.json  Mosquitto's dynamic-security plugin's state (it cuts revoked
                     devices, hub/transport/dynsec.py): written once, then the broker's
    hub.crt/.key     the hub's own MQTT client identity (CN ``edgefleet-hub``)
    hub-fanout.crt/.key  the hub's fan-out link (CN ``edgefleet-hub-fanout``): it may
                     only publish fan-out chunks (hub/transport/hub_links.py)
    ingest-{i}.crt/.key  the identities of the hub's ingest workers (hub/workers.py,
                     CN ``edgefleet-ingest-{i}``): they may only read telemetry
    hub-{i}.crt/.key, hub-leader.crt/.key  with ``hub_replicas``: each hub replica's own
                     identity and the one its leader's link uses (ADR 0032), with the
                     hub's rights: one certificate per connection, since the broker takes
                     its name as the client id
    passwords        only with ``plain_port``: the hub's password for the plain listener
    hub.password     only with ``plain_port``: that password in clear (mode 0600)

How identity flows: a client must present a certificate signed by the CA
(``require_certificate``); its CN becomes the MQTT username
(``use_identity_as_username``) and the username becomes the client id
(``use_username_as_clientid``), so a device cannot take over another's session by
connecting with its client id. ACL ``pattern`` lines substitute ``%u`` with that username
and apply to every user; the ``user`` section adds the hub's rights on top.

What Mosquitto 2.0.11 does, measured (tests/test_broker_security.py, DESIGN §8):

- A publish the ACL forbids is dropped silently on MQTT 3.1.1; on MQTT 5 the PUBACK
  carries reason code 135 (not authorised). The publisher stays connected.
- A subscription outside the ACL is granted (SUBACK QoS 1), but messages that the
  subscriber may not read are never delivered: the read check runs per message.
- SIGHUP rereads the CRL, the ACL and the server certificate, but an existing
  connection is never re-checked: a revoked device stays connected until it
  disconnects. The hub cuts it through the dynamic-security plugin loaded here (its
  facts: hub/transport/dynsec.py) and ignores it meanwhile.
- The plugin rewrites its state file in place: the account Mosquitto runs as must own
  it (else changes live until a restart, and its answers still say success).
- Listener options (``use_username_as_clientid``, the TLS ones) written before the first
  ``listener`` line create an implicit listener on port 1883: they come after it here.
- Mosquitto started as root switches to the ``mosquitto`` user BEFORE it opens the ACL,
  the server key and the CRL (and again on SIGHUP): that account must be able to read
  them. Pass ``user`` to choose the account (and, when run as root, to hand it the key).
- An expired CRL (past its next_update) makes Mosquitto refuse every client: refresh it.
- On MQTT 5 a publish nobody subscribes to is acknowledged with reason code 16 (no
  matching subscribers): a success, not a denial.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hub.transport.broker import (
    MAX_INFLIGHT_MESSAGES,
    MAX_PACKET_BYTES,
    MAX_QUEUED_BYTES,
    MAX_QUEUED_MESSAGES,
    BrokerError,
    raise_nofile,
)
from hub.transport.dynsec import (
    CONTROL_RESPONSE_TOPIC,
    CONTROL_TOPIC,
    plugin_files,
    write_initial_state,
)
from hub.transport.service_names import (
    fanout_identity,
    ingest_identity,
    replica_identities,
)
from hub.trust.pki import BROKER_IDENTITY, HUB_IDENTITY, CertificateAuthority
from shared.atomic import write_atomic
from shared.protocol import DEVICE_TO_HUB, FANOUT_ROOT, HUB_TO_DEVICE, KINDS, ROOT

__all__ = ["BrokerFiles", "TlsMosquitto", "reload_crl", "write_broker_config"]

PERSISTENT_CLIENT_EXPIRATION = "7d"  # a device switched off over a long weekend keeps its queue
AUTOSAVE_INTERVAL = 60  # seconds between persistence saves
MAX_KEEPALIVE = 300  # seconds
TLS_MIN_VERSION = "tlsv1.2"  # Mosquitto 2.0: the minimum; TLS 1.3 is offered too
PASSWORD_ITERATIONS = 101  # PBKDF2 rounds, mosquitto_passwd's; the password is random
DEFAULT_INGEST_WORKERS = 4  # ingest-worker identities written (hub serve --ingest-workers)


@dataclass(frozen=True)
class BrokerFiles:
    """What :func:`write_broker_config` wrote, and where the broker will listen."""

    directory: Path
    config: Path
    acl: Path
    ca: Path
    server_cert: Path
    server_key: Path
    crl: Path
    hub_cert: Path
    hub_key: Path
    port: int
    bind: str
    server_names: tuple[str, ...]
    hub_identity: str
    plain_port: int | None = None
    passwords: Path | None = None
    hub_password: Path | None = None
    ingest_workers: int = 0  # identities written for ingest workers
    hub_replicas: int = 0  # identities written for hub replicas (and their leader's link)
    dynsec: Path | None = None  # the plugin's state file; None: no plugin found
    dynsec_plugin: Path | None = None

    @property
    def start_command(self) -> list[str]:
        return ["mosquitto", "-c", str(self.config)]


def write_broker_config(
    out_dir: Path,
    ca: CertificateAuthority,
    *,
    port: int = 8883,
    bind: str = "127.0.0.1",
    server_names: Sequence[str] = ("localhost", "127.0.0.1"),
    hub_identity: str = HUB_IDENTITY,
    persistence_dir: Path | None = None,
    plain_port: int | None = None,
    user: str | None = None,
    ingest_workers: int = DEFAULT_INGEST_WORKERS,
    hub_replicas: int = 0,
    dynsec: bool = True,
) -> BrokerFiles:
    """Write a working Mosquitto config with TLS, client certificates, ACL and CRL.

    Each call issues a fresh server certificate and hub client certificate from ``ca``.

    Args:
        out_dir: where every file goes (created if missing); the account Mosquitto
            runs as must be able to read it.
        ca: the hub's CA: it signs the server and hub certificates and the CRL.
        port: the TLS listener's port.
        bind: the address it listens on (``0.0.0.0`` for every interface).
        server_names: DNS names and IP addresses the devices use to reach the broker.
        hub_identity: the CN of the hub's client certificate: the one user that may
            read and write every device's topics.
        persistence_dir: keep sessions and queued messages across restarts here.
        plain_port: DEVELOPMENT ONLY: also listen without TLS on 127.0.0.1 at this port,
            for the hub alone (username ``hub_identity``, the password in
            ``hub.password``). Devices always use TLS. Off by default.
        user: the account Mosquitto switches to when started as root, before it reads
            its files; when this runs as root, server.key (and the passwords and the
            persistence directory) are given to it. None: Mosquitto's default
            (``mosquitto``), to which the operator must give read access.
        ingest_workers: identities for this many hub ingest workers (read telemetry only).
        hub_replicas: identities for this many hub replicas and their leader's link.
        dynsec: load the dynamic-security plugin if the system has it (ADR 0036).

    Returns:
        The paths written and the listener's address.

    Raises:
        PkiError: ``identity_held``: a device holds a service name (nothing is written).
    """
    out_dir = Path(out_dir).resolve()  # mosquitto resolves relative paths from its cwd
    out_dir.mkdir(parents=True, exist_ok=True)
    files = BrokerFiles(
        directory=out_dir,
        config=out_dir / "mosquitto.conf",
        acl=out_dir / "acl",
        ca=out_dir / "ca.crt",
        server_cert=out_dir / "server.crt",
        server_key=out_dir / "server.key",
        crl=out_dir / "crl.pem",
        hub_cert=out_dir / "hub.crt",
        hub_key=out_dir / "hub.key",
        port=port,
        bind=bind,
        server_names=tuple(server_names),
        hub_identity=hub_identity,
        plain_port=plain_port,
        passwords=out_dir / "passwords" if plain_port is not None else None,
        hub_password=out_dir / "hub.password" if plain_port is not None else None,
        ingest_workers=ingest_workers,
        hub_replicas=hub_replicas,
        **plugin_files(out_dir, dynsec),
    )
    _write_identities(files, ca)
    acl = acl_text(hub_identity, ingest_workers, hub_replicas)
    write_atomic(files.acl, acl.encode(), mode=0o644)
    _write_state(files, persistence_dir)
    conf = config_text(files, persistence_dir=persistence_dir, user=user)
    write_atomic(files.config, conf.encode(), mode=0o644)
    if user is not None and os.geteuid() == 0:
        _give_to(user, [files.server_key, files.passwords, files.dynsec], persistence_dir)
    return files


def _write_state(files: BrokerFiles, persistence_dir: Path | None) -> None:
    """The plain listener's password, the persistence directory, the plugin's state."""
    if files.passwords is not None and files.hub_password is not None:
        password = secrets.token_urlsafe(32)
        write_atomic(files.hub_password, password.encode(), mode=0o600)
        line = password_line(files.hub_identity, password)
        write_atomic(files.passwords, line.encode(), mode=0o600)
    if persistence_dir is not None:
        Path(persistence_dir).mkdir(parents=True, exist_ok=True)
    if files.dynsec is not None:
        write_initial_state(files.dynsec)  # kept if there: it holds the revoked devices


def _write_identities(files: BrokerFiles, ca: CertificateAuthority) -> None:
    """The CA, the CRL, and fresh certificates for the broker, the hub and its workers."""
    workers = [ingest_identity(i) for i in range(files.ingest_workers)]
    replicas = replica_identities(files.hub_identity, files.hub_replicas)
    fanout = fanout_identity(files.hub_identity)
    names = [BROKER_IDENTITY, files.hub_identity, fanout, *workers, *replicas]
    ca.check_service_names(names)  # before any write
    server, server_key = ca.issue_service(BROKER_IDENTITY, server_names=files.server_names)
    hub, hub_key = ca.issue_service(files.hub_identity)
    write_atomic(files.ca, ca.trust_pem, mode=0o644)  # + retired CAs during a rotation
    write_atomic(files.server_cert, server.cert_pem, mode=0o644)
    write_atomic(files.server_key, server_key, mode=0o600)
    write_atomic(files.hub_cert, hub.cert_pem, mode=0o644)
    write_atomic(files.hub_key, hub_key, mode=0o600)
    write_atomic(files.crl, ca.crl_pem(), mode=0o644)
    for i, name in enumerate(workers):
        worker, worker_key = ca.issue_service(name)
        write_atomic(files.directory / f"ingest-{i}.crt", worker.cert_pem, mode=0o644)
        write_atomic(files.directory / f"ingest-{i}.key", worker_key, mode=0o600)
    for name in [*replicas, fanout]:
        replica, replica_key = ca.issue_service(name)
        file = "hub-" + name.removeprefix(f"{files.hub_identity}-")
        write_atomic(files.directory / f"{file}.crt", replica.cert_pem, mode=0o644)
        write_atomic(files.directory / f"{file}.key", replica_key, mode=0o600)


def _give_to(user: str, paths: list[Path | None], persistence_dir: Path | None) -> None:
    """Let ``user`` read the broker's secrets (Mosquitto loads them after switching)."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no account {user!r} for mosquitto to run as") from None
    for path in [*paths, persistence_dir]:
        if path is not None:
            os.chown(path, account.pw_uid, account.pw_gid)


def acl_text(
    hub_identity: str = HUB_IDENTITY, ingest_workers: int = 0, hub_replicas: int = 0
) -> str:
    """The ACL: device ``%u`` writes its reports and reads its commands; nothing else.
    The hub (and each hub replica) reads and writes everything; its ingest workers read
    telemetry."""
    lines = [
        "# Generated by edgefleet (hub/transport/brokerconf.py). A client's username is the CN",
        "# of its certificate. `pattern` lines apply to every user (the hub too) with %u replaced;",
        "# a device may not write its own cmd/blob topics (it cannot pose as the hub).",
    ]
    for kind in KINDS:
        if kind in DEVICE_TO_HUB:
            lines.append(f"pattern write {ROOT}/%u/{kind}")
        elif kind in HUB_TO_DEVICE:
            lines.append(f"pattern read {ROOT}/%u/{kind}")
    lines += [
        "# fan-out (docs/security.md): every client reads the chunks the hub publishes once",
        "# per rollout and target; only the hub writes them",
        f"pattern read {FANOUT_ROOT}/+/blob",
    ]
    for hub in [hub_identity, *replica_identities(hub_identity, hub_replicas)]:
        lines += [
            "",
            f"user {hub}",
            f"topic readwrite {ROOT}/#",
            f"topic write {FANOUT_ROOT}/+/blob",
            # the dynamic-security plugin's commands and answers (hub/transport/dynsec.py)
            f"topic write {CONTROL_TOPIC}",
            f"topic read {CONTROL_RESPONSE_TOPIC}",
        ]
    lines += [
        "",
        f"user {fanout_identity(hub_identity)}",  # the hub's fan-out link: nothing else
        f"topic write {FANOUT_ROOT}/+/blob",
        "",
    ]
    for i in range(ingest_workers):
        lines += [f"user {ingest_identity(i)}", f"topic read {ROOT}/+/telemetry", ""]
    return "\n".join(lines)


def password_line(username: str, password: str) -> str:
    """One line of a Mosquitto 2.0 password file (PBKDF2-SHA512, as mosquitto_passwd)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PASSWORD_ITERATIONS)
    b64 = base64.b64encode
    return f"{username}:$7${PASSWORD_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}\n"


def config_text(
    files: BrokerFiles, *, persistence_dir: Path | None = None, user: str | None = None
) -> str:
    """The mosquitto.conf text for ``files`` (see the module docstring for why)."""
    lines = [
        "# Generated by edgefleet (hub/transport/brokerconf.py): regenerate rather than edit.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {files.acl}",
        # sized for a hub that receives from thousands of devices (DESIGN §8)
        f"max_packet_size {MAX_PACKET_BYTES}",  # > a blob (1 MiB) + header, topic, properties
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        f"persistent_client_expiration {PERSISTENT_CLIENT_EXPIRATION}",
        "set_tcp_nodelay true",
        f"max_keepalive {MAX_KEEPALIVE}",
        "log_dest stderr",  # the journal under systemd; a file under TlsMosquitto
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
    ]
    if user is not None:
        lines.append(f"user {user}")
    if files.dynsec is not None and files.dynsec_plugin is not None:
        # cuts a revoked device's connection; the ACL file still decides (ADR 0036)
        lines += [f"plugin {files.dynsec_plugin}", f"plugin_opt_config_file {files.dynsec}"]
    if files.passwords is not None:
        # used by the plain listener only: use_identity_as_username overrides it on TLS
        lines.append(f"password_file {files.passwords}")
    if persistence_dir is not None:
        lines += [
            "persistence true",
            f"persistence_location {str(Path(persistence_dir).resolve()).rstrip('/')}/",
            f"autosave_interval {AUTOSAVE_INTERVAL}",
        ]
    else:
        lines.append("persistence false")
    lines += [
        "",
        "# devices and the hub: TLS with a client certificate from the hub's CA",
        f"listener {files.port} {files.bind}",
        # listener options must follow their `listener` line (else Mosquitto opens 1883)
        "use_username_as_clientid true",
        f"cafile {files.ca}",
        f"certfile {files.server_cert}",
        f"keyfile {files.server_key}",
        f"crlfile {files.crl}",
        "require_certificate true",
        "use_identity_as_username true",
        f"tls_version {TLS_MIN_VERSION}",
    ]
    if files.plain_port is not None:
        lines += [
            "",
            "# DEVELOPMENT ONLY: plain TCP on loopback for the hub (password in hub.password)",
            f"listener {files.plain_port} 127.0.0.1",
            "use_username_as_clientid true",
        ]
    return "\n".join([*lines, ""])


def reload_crl(ca: CertificateAuthority, files: BrokerFiles, pid: int) -> None:
    """Rewrite ``crl.pem`` from the CA and make the Mosquitto process ``pid`` reread it.

    Only new connections are checked against it: Mosquitto does not drop a client
    that is already connected, so the hub must also refuse a revoked device's messages.
    Call it on a schedule too: Mosquitto refuses every client once the CRL expires.
    """
    write_atomic(files.crl, ca.crl_pem(), mode=0o644)
    os.kill(pid, signal.SIGHUP)


class TlsMosquitto:
    """Mosquitto as a child process running a config from :func:`write_broker_config`.

    ``with TlsMosquitto(files) as broker:`` starts it and waits until the TLS port
    accepts connections; leaving the block stops it.
    """

    def __init__(self, files: BrokerFiles) -> None:
        self.files = files
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.files.bind in ("0.0.0.0", "") else self.files.bind

    @property
    def port(self) -> int:
        return self.files.port

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BrokerError("mosquitto is not running")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self.files.directory / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> TlsMosquitto:
        """Start Mosquitto and wait for its TLS port (and its plain one, when it has one).

        Raises:
            BrokerError: no mosquitto binary, or it exited or did not listen in time.
        """
        exe = shutil.which("mosquitto")
        if exe is None:
            raise BrokerError("the mosquitto binary is not on PATH")
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(
                [exe, "-c", str(self.files.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=raise_nofile,
            )
        deadline = time.monotonic() + timeout
        # every listener: Mosquitto opens them one after the other, the plain one last
        ports = [(self.host, self.port)]
        if self.files.plain_port is not None:
            ports.append(("127.0.0.1", self.files.plain_port))
        while not all(_listening(host, port) for host, port in ports):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BrokerError(
                    f"mosquitto did not start on {self.host}:{self.port}: {_tail(self.log_path)}"
                )
            time.sleep(0.05)
        return self

    def reload(self) -> None:
        """SIGHUP: reread the CRL, the ACL and the server certificate."""
        os.kill(self.pid, signal.SIGHUP)

    def reload_crl(self, ca: CertificateAuthority) -> None:
        reload_crl(ca, self.files, self.pid)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> TlsMosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " / ".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"(no log at {path})"
