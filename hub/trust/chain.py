"""The online chain of the hub's TUF repository: how targets, the model roles, snapshot
and timestamp are signed together and kept consistent on disk.

:class:`SignedChain` is the base of ``TrustRepository`` (hub/trust/repository.py), which
owns the root, the keys and the locks; this part owns the chain's metadata, its files,
and :meth:`SignedChain._publish`, the one place that signs them in order. The model roles
(hub/trust/delegation.py) hang below top-level targets (ADR 0037).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from hub.trust.delegation import ModelRoles
from hub.trust.roles import ChainRole, Expiry, renew
from shared.atomic import write_atomic
from shared.delegation import role_file
from shared.reasons import Reason
from shared.trust import TrustError

__all__ = ["SignedChain"]

_SERIALIZER: Final = JSONSerializer(compact=True)
TOP_FILES: Final = ("root.json", "targets.json", "snapshot.json", "timestamp.json")


class SignedChain:
    """The chain's metadata in memory, its signed bytes, and signing it in order."""

    _meta_dir: Path
    _expiry: Expiry
    _signers: dict[str, list[Signer]]
    _files: dict[str, bytes]  # root/targets/snapshot/timestamp.json -> bytes
    _models: ModelRoles
    _root: Metadata[Root]
    _targets: Metadata[Targets]
    _snapshot: Metadata[Snapshot]
    _timestamp: Metadata[Timestamp]

    def _sign(self, md: Metadata[Any], signers: list[Signer]) -> bytes:
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        return md.to_bytes(_SERIALIZER)

    def _read(self, filename: str) -> bytes:
        data = (self._meta_dir / filename).read_bytes()
        self._files[filename] = data
        return data

    def _reconcile(self) -> None:
        """Repair a chain left half-written by a crash between two file writes."""
        if self._snapshot.signed.meta != self._snapshot_meta(None):
            self._publish("snapshot")
        elif self._timestamp.signed.snapshot_meta != MetaFile(
            self._snapshot.signed.version, length=len(self._files["snapshot.json"])
        ):
            self._publish("timestamp")

    def _snapshot_meta(self, targets: bytes | None) -> dict[str, MetaFile]:
        """What the snapshot lists: the version of every shard and model role (no length,
        no hashes: ADR 0041), and the version and length of ``targets`` (default: the
        targets.json signed before)."""
        meta = {role_file(r): MetaFile(md.signed.version) for r, md in self._models.roles.items()}
        data = targets if targets is not None else self._files.get("targets.json", b"")
        meta["targets.json"] = MetaFile(self._targets.signed.version, length=len(data))
        return meta

    def _upgrade(self) -> None:
        """Move an old layout's targets into model roles (ADR 0037), and model roles that
        top-level targets delegates itself under their shards (ADR 0041); devices follow,
        as every role only moves forward."""
        top = self._targets.signed
        threshold = self._root.signed.roles["targets"].threshold
        roles: list[str] = []
        try:
            if top.delegations is None or top.targets:
                roles = self._models.upgrade(
                    top, self._signers["targets"], threshold=threshold,
                    lifetime=self._expiry.targets,
                )  # fmt: skip
        except ValueError as e:
            raise TrustError(
                Reason.METADATA_INVALID, f"cannot upgrade {self._meta_dir}: {e}"
            ) from e
        roles += self._models.reshard(top, threshold=threshold, lifetime=self._expiry.targets)
        if roles:
            self._publish("targets", roles=sorted(set(roles)))

    def _publish(
        self, first: ChainRole, *, bump: bool = True, roles: tuple[str, ...] | list[str] = ()
    ) -> None:
        """Re-sign the model ``roles``, then ``first`` and every role after it (targets,
        snapshot, timestamp).

        Each role gets a new version (unless ``bump`` is false, at creation, or a model
        role is signed the first time) and a new expiry; the snapshot lists the version of
        every delegated role (no length, no hashes: ADR 0041) and top-level targets' version
        and length, the timestamp the snapshot's version and length. Files are written in
        chain order, and the caches are swapped only once all are written, so a reader
        never sees a mixed set.
        """
        if roles and first == "timestamp":
            first = "snapshot"  # a model role changed: the snapshot lists its version
        new: dict[str, bytes] = {}
        for role in roles:
            md, filename = self._models.roles[role], role_file(role)
            renew(md.signed, self._expiry.targets, bump and filename in self._models.files)
            new[filename] = self._sign(md, self._signers["targets"])
        if first == "targets":
            renew(self._targets.signed, self._expiry.targets, bump)
            new["targets.json"] = self._sign(self._targets, self._signers["targets"])
        if first in ("targets", "snapshot"):
            self._snapshot.signed.meta = self._snapshot_meta(new.get("targets.json"))
            renew(self._snapshot.signed, self._expiry.snapshot, bump)
            new["snapshot.json"] = self._sign(self._snapshot, self._signers["snapshot"])
        length = len(new.get("snapshot.json", self._files.get("snapshot.json", b"")))
        self._timestamp.signed.snapshot_meta = MetaFile(
            self._snapshot.signed.version, length=length
        )
        renew(self._timestamp.signed, self._expiry.timestamp, bump)
        new["timestamp.json"] = self._sign(self._timestamp, self._signers["timestamp"])
        for filename, data in new.items():
            write_atomic(self._meta_dir / filename, data)
        for filename, data in new.items():
            (self._files if filename in TOP_FILES else self._models.files)[filename] = data
