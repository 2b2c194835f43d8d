"""Cutting a revoked device's live connection: Mosquitto's dynamic-security plugin.

A CRL stops new connections only (DESIGN §8). Mosquitto 2 ships a plugin
(``mosquitto_dynamic_security.so``) that takes commands on ``$CONTROL/dynamic-security/v1``
and answers on ``…/response``; ``edgefleet broker config`` loads it beside the ACL file
(hub/transport/brokerconf.py, ADR 0036). The hub sends those commands over its own MQTT
link (the ACL lets only the hub's identities write there and read the answers):

- revoke: ``createClient`` for the device with the role ``edgefleet-revoked`` (deny
  every publish, delivery and subscription, whatever the ACL file grants) and
  ``disableClient``, which closes its open connection at once;
- re-enrolment: ``deleteClient``: the ACL file alone decides again;
- :meth:`DynamicSecurity.sync` (the hub's maintenance timer): the plugin's revoked
  clients made equal to the hub's revocations, for a broker that missed a command.

What Mosquitto 2.0.11 does with certificate clients, measured (docs/security.md,
tests/test_live_revocation.py): the plugin never authenticates a client that logs in
by its certificate (``use_identity_as_username``), so a client it does not know is let
in, and a disabled one too: only the CRL refuses the connection. ACL checks ask the
plugin first: its explicit deny overrides the ACL file's grant; a client it does not know
(or a topic none of its roles names) falls through to the ACL file. ``%u``/``%c`` are
not substituted in its ACLs (a role per device would be needed for it to own them).
``disableClient`` (and ``deleteClient``) closes the client's connection within
milliseconds, without its Last Will: MQTT 5 clients get DISCONNECT reason 0x98
("administrative action"), 3.1.1 clients a closed socket.

Errors: none raised; each call answers a sentence for the operator (``disconnected:`` /
``not disconnected:`` …), logged when it failed.
"""

from __future__ import annotations

import glob
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from shared.atomic import write_atomic

log = logging.getLogger(__name__)

__all__ = [
    "CONTROL_RESPONSE_TOPIC",
    "CONTROL_TOPIC",
    "REVOKED_ROLE",
    "DynamicSecurity",
    "NoBrokerControl",
    "broker_connections",
    "find_plugin",
    "initial_state",
    "plugin_files",
    "write_initial_state",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
REVOKED_ROLE = "edgefleet-revoked"  # denies everything; only revoked devices hold it
STATE_FILE = "dynamic-security.json"  # the plugin's state, beside mosquitto.conf
ANSWER_TIMEOUT_S = 5.0  # seconds the hub waits for the plugin's answer
SYNC_BATCH = 200  # devices per control message (3 commands each, ~150 bytes per command)
# what 2.0.11 answers for what is already so: a revocation repeated, a role held
REVOKE_TOLERATED = {"createClient": "Client already exists", "addClientRole": "Internal error"}
ROLE_TOLERATED = {"createRole": "Role already exists"}
DENIED = ("publishClientSend", "publishClientReceive", "subscribePattern")


def revoked_role() -> dict[str, Any]:
    """The role a revoked device holds: no publish, no delivery, no subscription."""
    return {
        "rolename": REVOKED_ROLE,
        "textname": "edgefleet: a revoked device (hub/transport/dynsec.py)",
        "acls": [{"acltype": t, "topic": "#", "priority": 0, "allow": False} for t in DENIED],
    }


def initial_state() -> dict[str, Any]:
    """The plugin's state file as ``edgefleet broker config`` writes it: the revoked role,
    no client, and defaults that grant nothing (the ACL file decides for everyone else)."""
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
        "clients": [],
        "groups": [],
        "roles": [revoked_role()],
    }


class ControlChannel(Protocol):
    """What the plugin is reached through: the hub's MQTT link (hub/transport/link.py)."""

    def publish(self, topic: str, payload: bytes, qos: int) -> None: ...

    def listen(self, topic: str, callback: Callable[[bytes], None]) -> None: ...


class NoBrokerControl:
    """The broker config the hub was given has no dynamic-security plugin."""

    def __init__(self, why: str) -> None:
        self.why = why

    def cut(self, device_id: str) -> str:
        return f"not disconnected: {self.why}; it stays connected until it disconnects"

    def restore(self, device_id: str) -> str:
        return f"nothing to restore: {self.why}"

    def sync(self, revoked: Iterable[str]) -> str:
        return self.why


class DynamicSecurity:
    """Commands to the broker's dynamic-security plugin over ``channel``.

    Args:
        channel: the hub's link; it must be connected to send.
        timeout_s: how long to wait for the plugin's answer.
    """

    def __init__(self, channel: ControlChannel, *, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        self.channel = channel
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}
        channel.listen(CONTROL_RESPONSE_TOPIC, self._on_response)

    def cut(self, device_id: str) -> str:
        """Deny the device every topic and close its connection."""
        answers = self.send(_revoke_commands(device_id))
        if answers is None:
            return self._failed("not disconnected", f"no answer in {self.timeout_s:g} s")
        errors = _errors(answers, REVOKE_TOLERATED)
        if errors:
            return self._failed("not disconnected", errors)
        return (
            "disconnected: the broker closed its connection and refuses it every topic"
            " (dynamic-security)"
        )

    def restore(self, device_id: str) -> str:
        """Lift the broker's denial: the ACL file alone decides for the device again."""
        answers = self.send([_command("deleteClient", username=device_id)])
        if answers is None:
            return self._failed("not restored", f"no answer in {self.timeout_s:g} s")
        errors = _errors(answers, {"deleteClient": "Client not found"})
        if errors:
            return self._failed("not restored", errors)
        return "restored: the broker no longer denies it (dynamic-security)"

    def sync(self, revoked: Iterable[str]) -> str:
        """Make the plugin's revoked clients the hub's revocations: deny those it misses,
        free those the hub has lifted. Only clients holding :data:`REVOKED_ROLE` are
        touched (an operator's own clients stay)."""
        # the role first: a state file the operator made (mosquitto_ctrl) may lack it
        listed = self.send([_create_role(), _command("listClients", verbose=True, count=-1)])
        if listed is None:
            return self._failed("not synchronised", f"no answer in {self.timeout_s:g} s")
        held = _revoked_clients(listed)
        if held is None:
            return self._failed("not synchronised", _errors(listed, ROLE_TOLERATED))
        want = set(revoked)
        commands = [c for d in sorted(want - held) for c in _revoke_commands(d)]
        commands += [_command("deleteClient", username=d) for d in sorted(held - want)]
        for i in range(0, len(commands), SYNC_BATCH * 3):
            if self.send(commands[i : i + SYNC_BATCH * 3]) is None:
                return self._failed("not synchronised", f"no answer in {self.timeout_s:g} s")
        return f"synchronised: {len(want - held)} denied, {len(held - want)} freed"

    def send(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Send ``commands`` in one message; the plugin's answers, or None on a time-out."""
        tag = uuid.uuid4().hex
        for c in commands:
            c["correlationData"] = tag
        done, answers = threading.Event(), list[dict[str, Any]]()
        with self._lock:
            self._waiting[tag] = (done, answers)
        try:
            payload = json.dumps({"commands": commands}).encode()
            self.channel.publish(CONTROL_TOPIC, payload, 1)
            if not done.wait(self.timeout_s):
                return None
            return answers
        finally:
            with self._lock:
                self._waiting.pop(tag, None)

    def _on_response(self, payload: bytes) -> None:
        try:
            responses = json.loads(payload)["responses"]
            if not isinstance(responses, list):
                raise TypeError("responses is not a list")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("dynamic-security: an unreadable answer (%s): %r", e, payload[:200])
            return
        answers_in = [r for r in responses if isinstance(r, dict)]
        tags = {str(r.get("correlationData")) for r in answers_in}
        with self._lock:  # one message answers one send; another replica's are not ours
            waiting = [self._waiting[t] for t in tags if t in self._waiting]
        for done, answers in waiting:
            answers.extend(answers_in)
            done.set()

    @staticmethod
    def _failed(what: str, why: str) -> str:
        notice = f"{what}: the broker's dynamic-security plugin: {why}"
        log.error("%s", notice)
        return notice


def _command(name: str, **fields: Any) -> dict[str, Any]:
    return {"command": name, **fields}


def _revoke_commands(device_id: str) -> list[dict[str, Any]]:
    """Create the client with the revoked role (or give an existing one the role), and
    disable it: the plugin closes its connection."""
    role = {"rolename": REVOKED_ROLE, "priority": 0}
    return [
        _command("createClient", username=device_id, roles=[role], textname="revoked"),
        _command("addClientRole", username=device_id, rolename=REVOKED_ROLE),
        _command("disableClient", username=device_id),
    ]


def _create_role() -> dict[str, Any]:
    role = revoked_role()
    return _command("createRole", rolename=role["rolename"], acls=role["acls"])


def _errors(answers: list[dict[str, Any]], tolerated: dict[str, str]) -> str:
    """The plugin's errors, but for those expected (a client that already exists …)."""
    bad = [
        f"{a.get('command')}: {a['error']}"
        for a in answers
        if a.get("error") and tolerated.get(str(a.get("command"))) != a["error"]
    ]
    return "; ".join(bad)


def _revoked_clients(answers: list[dict[str, Any]]) -> set[str] | None:
    """The usernames holding the revoked role, from a verbose ``listClients`` answer."""
    for a in answers:
        if a.get("command") == "listClients" and "data" in a:
            clients = a["data"].get("clients", [])
            return {
                c["username"]
                for c in clients
                if isinstance(c, dict)
                and any(r.get("rolename") == REVOKED_ROLE for r in c.get("roles", []))
            }
    return None


def broker_connections(
    tls_dir: Path | None, channel: ControlChannel
) -> DynamicSecurity | NoBrokerControl:
    """The plugin over ``channel`` when the broker config in ``tls_dir`` loads it (what
    ``edgefleet broker config`` wrote: its state file is there), else what says why not."""
    if tls_dir is None:
        return NoBrokerControl("no TLS broker configured")
    if not (tls_dir / STATE_FILE).exists():
        return NoBrokerControl(
            f"the broker config in {tls_dir} has no dynamic-security plugin"
            " (regenerate it: edgefleet broker config, docs/operations.md)"
        )
    return DynamicSecurity(channel)


PLUGIN_NAME = "mosquitto_dynamic_security.so"
# where Debian/Ubuntu (multiarch), Fedora and a source build put it
PLUGIN_DIRS = ("/usr/lib/*-linux-gnu", "/usr/lib", "/usr/lib64", "/usr/local/lib")


def find_plugin() -> Path | None:
    """The dynamic-security plugin Mosquitto 2 ships, where the system keeps it."""
    for pattern in PLUGIN_DIRS:
        for directory in sorted(glob.glob(pattern)):
            path = Path(directory) / PLUGIN_NAME
            if path.is_file():
                return path
    return None


def plugin_files(out_dir: Path, enabled: bool) -> dict[str, Path | None]:
    """``BrokerFiles``' plugin fields: the state file in ``out_dir`` and the plugin, if
    ``enabled`` and the system has it."""
    found = find_plugin() if enabled else None
    return {"dynsec": out_dir / STATE_FILE if found else None, "dynsec_plugin": found}


def write_initial_state(path: Path) -> bool:
    """Write the plugin's state file unless it exists (the broker rewrites it with every
    command: it holds the revoked devices). True when written."""
    if path.exists():
        return False
    write_atomic(path, json.dumps(initial_state(), indent=2).encode(), mode=0o644)
    return True
