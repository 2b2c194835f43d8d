"""Signed commands from the hub: checked, remembered against replay, then acted on.

A command must parse, carry a director signature this device trusts, name this device and
not have expired; its id must be new (the ids of unexpired commands are persisted). A
deploy fetches signed metadata of its own; a rollback or a capture (and any command signed
by a key this device does not know yet) is first held until the device has walked to the
hub's newest root, so a director key rotated out no longer works (docs/security.md). Every
command this device will not act on is answered with its reason.
"""

from __future__ import annotations

from agent.core.capture import Captures
from agent.core.config import MAX_HELD_COMMANDS
from agent.core.context import CoreContext
from agent.core.job import DeploymentRef
from agent.core.update import Updater
from agent.events import Outbox, PersistState, Publish, TrustRefreshed, VerifyMetadata
from shared import protocol
from shared.director import CommandError, verify_command
from shared.protocol import ProtocolError
from shared.reasons import Reason

TRUST_REFRESH_PATIENCE = 4  # fetch_timeout_s multiples to wait for a trust refresh


class Commands:
    """The command path of one device, and the commands held for a trust refresh."""

    def __init__(self, ctx: CoreContext, updater: Updater, captures: Captures) -> None:
        self.ctx = ctx
        self.updater = updater
        self.captures = captures
        # Commands waiting for a trust refresh (the hub's newest roots, so the director
        # keys are current): rollback and capture always (they fetch no metadata of
        # their own, so a key rotated out would otherwise still be trusted), any command
        # signed by a key this device does not know yet. One fetch serves them all.
        self._held: list[bytes] = []
        self._held_req: str | None = None  # the fetch_meta request they wait for
        self._held_since = 0.0

    def on_command(self, payload: bytes, now: float, out: Outbox, *, held: bool = False) -> None:
        ctx = self.ctx
        try:
            msg = protocol.decode(payload, expect=protocol.TOPIC_TYPES["cmd"])
        except ProtocolError as e:
            ctx.drop(e.reason, e.detail)
            return
        if msg.type in protocol.UNSIGNED_COMMANDS:  # the hub's asks about an upload
            self.captures.uploads.on_request(msg, now, out)
            return
        try:
            cmd = verify_command(
                msg, payload, ctx.director_keys, device_id=ctx.config.device_id, now=now
            )
        except CommandError as e:
            newer_root = e.reason == Reason.UNKNOWN_KEY and e.root_version > ctx.root_version
            # The hub may have rotated the director key: walk its newer roots first.
            if not (newer_root and not held and self._hold(payload, now, out)):
                self._refuse(out, msg, e.reason, e.detail, now)
            return
        commands = ctx.state.commands
        if cmd.id in commands:
            self._refuse(out, msg, Reason.COMMAND_REPLAYED, f"command {cmd.id}", now)
            return
        if cmd.type != "deploy" and not held:
            # A deploy walks to the newest root before it downloads anything; a rollback
            # or a capture must too, or a director key rotated out (stolen) still works.
            if not self._hold(payload, now, out):
                self._refuse(out, msg, Reason.BUSY, "too many commands waiting", now)
            return
        for cmd_id in [c for c, expires in commands.items() if expires < now]:
            del commands[cmd_id]
        if len(commands) >= ctx.config.max_remembered_commands:
            self._refuse(out, msg, Reason.COMMAND_INVALID, "too many unexpired commands", now)
            return
        commands[cmd.id] = cmd.expires
        before = len(out.actions)
        if cmd.type == "deploy":
            self.updater.on_deploy({**cmd.body, "keyids": sorted(cmd.keyids)}, now, out)
        elif cmd.type == "capture":
            self.captures.on_command(dict(cmd.body), now, out)
        else:
            self.updater.on_rollback_cmd(dict(cmd.body), now, out)
        if not any(isinstance(a, PersistState) for a in out.actions[before:]):
            ctx.persist(out)  # the command id must outlive a restart (replays)

    def _refuse(
        self, out: Outbox, msg: protocol.Message, reason: Reason, detail: str, now: float
    ) -> None:
        """Report a command this device will not act on. Nothing else changes."""
        body = msg.body
        detail = f"{msg.type} {msg.id}: {detail}"
        if msg.type == "capture":
            self.captures.status(out, dict(body), "refused", now, reason, detail)
            return
        ref = DeploymentRef(body["deployment"], body["model"], body["version"])
        self.ctx.event(out, ref, "refused", now, reason, detail, remember=False)

    # ------------------------------------------------------------- held commands

    def _hold(self, payload: bytes, now: float, out: Outbox) -> bool:
        """Keep a command until the trust refresh it waits for; False if too many wait."""
        if len(self._held) >= MAX_HELD_COMMANDS:
            return False
        self._held.append(payload)
        if self._held_req is None:
            self._held_req, self._held_since = self.ctx.next_req(), now
            body = {"req": self._held_req, "root_version": self.ctx.root_version}
            fetch = protocol.encode("fetch_meta", body, ts=now)
            out.add(Publish(self.ctx.topic("fetch"), fetch))
        return True

    def on_blob(self, blob: protocol.Blob, now: float, out: Outbox) -> bool:
        """Take the answer to the held commands' trust refresh; False: not theirs."""
        if self._held_req is None or blob.header["req"] != self._held_req:
            return False
        if blob.kind == "meta":
            out.add(VerifyMetadata(self._held_req, protocol.split_meta_blob(blob), None))
        else:
            why = f"the hub answered: {blob.header.get('reason')}"
            self.fail_held(out, Reason.HUB_ERROR, why, now)
        return True

    def on_trust_refreshed(self, ev: TrustRefreshed, out: Outbox) -> None:
        self.ctx.root_version = ev.root_version
        self.ctx.director_keys = ev.director_keys
        if self._held_req is None or self._held_req != ev.req:
            return
        held, self._held, self._held_req = self._held, [], None
        for payload in held:  # checked again, against the keys of the newest root
            self.on_command(payload, ev.now, out, held=True)

    def check_timeout(self, out: Outbox, now: float) -> None:
        patience = self.ctx.config.fetch_timeout_s * TRUST_REFRESH_PATIENCE
        if self._held_req is not None and now - self._held_since > patience:
            self.fail_held(out, Reason.FETCH_TIMEOUT, "no answer to the trust refresh", now)

    def fail_held(self, out: Outbox, reason: Reason, why: str, now: float) -> None:
        """The trust refresh the held commands wait for failed: refuse them, by its reason."""
        held, self._held, self._held_req = self._held, [], None
        for payload in held:
            try:
                msg = protocol.decode(payload, expect=protocol.TOPIC_TYPES["cmd"])
            except ProtocolError:  # it parsed when it was held
                continue
            self._refuse(out, msg, reason, f"trust refresh failed: {why}", now)
