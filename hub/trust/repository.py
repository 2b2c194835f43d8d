"""The hub's TUF repository: keys per role, thresholds, rotation, signed metadata on disk.

Built on ``tuf.api.metadata`` (DESIGN §4). Roles:

- ``root`` (k-of-n keys; may live offline in a directory of its own): signs the list of
  every other role's keys, and each new root (version N+1 is signed by a threshold of the
  keys of N and of N+1, so devices walk the chain).
- ``targets``, ``snapshot``, ``timestamp`` (online, on the hub): sign the model list and
  stop mix-and-match and freeze attacks. Top-level targets delegates each model to a role
  of its own, ``model-<name>``, signed by the targets keys (hub/trust/delegation.py, ADR
  0037), so a device fetches the metadata of its own model only. The hub re-signs them
  before they expire (:meth:`TrustRepository.refresh_expiring`, on a timer in the hub).
- ``director`` (online): signs deploy and rollback commands. Its public keys travel in the
  root metadata under ``x-edgefleet-director`` (signed by root like everything else), so a
  device pins them with the root and learns a rotation by walking the root chain.

The roles' names, key plans and lifetimes are in hub/trust/roles.py, the private key
files in hub/trust/keystore.py; ``Expiry``, ``RepositoryError`` and ``MAX_THRESHOLD`` stay
importable from here.

Two things differ from a stock TUF repository, both forced by the transport or by TUF:
``consistent_snapshot`` is off (fixed file names make the staging lookup a dict lookup),
and a model's manifest is JSON text (ADR 0002), a target of its own (ADR 0037).

Exceptions::

    RepositoryError         the repository cannot do what was asked (a root key is offline,
                            a bad threshold, an unusable directory)
    TrustError(METADATA_INVALID)  bad target input, or a repository that does not load
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import (
    Metadata,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from hub.trust.chain import SignedChain
from hub.trust.delegation import ModelRoles, empty_delegations, manifest_text
from hub.trust.keystore import KeyStore
from hub.trust.roles import (
    MAX_THRESHOLD,
    ONLINE_ROLES,
    ROLES,
    TOP_ROLES,
    Expiry,
    RepositoryError,
    check_plan,
    director_field,
    expires_in,
    is_online,
    key_plan,
    remaining,
)
from hub.trust.sharing import DirectoryAccess
from shared.atomic import write_atomic
from shared.delegation import MANIFEST_SUFFIX
from shared.director import DIRECTOR_FIELD
from shared.reasons import Reason
from shared.trust import TrustError, parse_metadata

__all__ = ["MAX_THRESHOLD", "Expiry", "RepositoryError", "TrustRepository"]

MAX_TARGET_NAME: Final = 246  # characters: with ".manifest", the protocol's 256 limit
_SERIALIZER: Final = JSONSerializer(compact=True)
DEFAULT_EXPIRY: Final = Expiry()


class TrustRepository(SignedChain):
    """The hub's TUF repository. Thread-safe: one lock covers every mutation and read.

    Layout under ``root_dir``::

        keys/{targets,snapshot,timestamp,director}/<keyid>.pem   private keys, mode 0600
        keys/root/<keyid>.pem          unless ``root_keys_dir`` puts them elsewhere (offline)
        metadata/N.root.json, root.json, targets.json, snapshot.json, timestamp.json
        metadata/shard-<nn>.json       the shard roles (ADR 0041)
        metadata/model-<name>.json     each model's delegated role (ADR 0037)
        manifests/<sha256>             the manifest targets' bytes
    """

    def __init__(self, root_dir: Path, expiry: Expiry, root_keys_dir: Path | None) -> None:
        """Use :meth:`open_or_init`."""
        self._keys = KeyStore(root_dir / "keys", root_keys_dir)
        self._meta_dir = root_dir / "metadata"
        self._expiry = expiry
        self._lock = threading.Lock()
        self._signers: dict[str, list[Signer]] = {}
        self._roots: dict[int, bytes] = {}  # version -> N.root.json bytes
        self._files: dict[str, bytes] = {}  # root/targets/snapshot/timestamp.json -> bytes
        self._models = ModelRoles(self._meta_dir, root_dir / "manifests")  # ADR 0037
        # the directory's locks; shared by replicas: reload what the others write
        self._access = DirectoryAccess(root_dir, self._meta_dir)

    @classmethod
    def open_or_init(
        cls,
        root_dir: Path,
        *,
        expiry: Expiry = DEFAULT_EXPIRY,
        thresholds: Mapping[str, int] | None = None,
        key_counts: Mapping[str, int] | None = None,
        root_keys_dir: Path | None = None,
        exclusive: bool = False,
        shared: bool = False,
    ) -> TrustRepository:
        """Open the repository in ``root_dir``, or create one with fresh keys.

        Args:
            root_dir: the repository's directory (created if missing).
            expiry: lifetimes applied to every metadata signed from now on.
            thresholds: signatures a role needs, per role (default 1); ignored when the
                repository exists.
            key_counts: keys made per role (default: its threshold), e.g. root 3 with
                threshold 2: any 2 of the 3 sign, so one lost key locks nobody out.
            root_keys_dir: where the root keys are (default ``root_dir/keys/root``). The
                hub runs without them; rotation and root renewal need them.
            exclusive: hold a lock on the repository until :meth:`close`, so a running
                hub and ``edgefleet keys`` never sign over each other's metadata.
            shared: for hub replicas on one directory (hub/trust/sharing.py): each write
                waits for the others', and what another replica wrote is reloaded before
                it is read. ``edgefleet keys`` is refused while any replica has it.

        Raises:
            TrustError: METADATA_INVALID if an existing repository is incomplete or its
                online keys do not match its root.
            RepositoryError: a bad threshold, or (``exclusive``, ``shared``) another
                process holds it in the other way.
            OSError: the directory cannot be read or written.
        """
        repo = cls(root_dir, expiry, root_keys_dir)
        repo._access = DirectoryAccess(root_dir, repo._meta_dir, exclusive=exclusive, shared=shared)
        with repo._access.exclusive(), repo._lock:  # two replicas may start at once
            if (repo._meta_dir / "root.json").exists():
                repo._load()
            else:
                repo._init(key_plan(thresholds or {}, key_counts or {}))
            repo._access.mark()
        return repo

    def close(self) -> None:
        """Release the ``exclusive`` or ``shared`` lock (nothing else needs closing)."""
        self._access.close()

    def serialized(self) -> AbstractContextManager[None]:
        """Hold the write lock around several steps (a registry's publish: the version
        number, the target, the row), so replicas never sign two files as one target."""
        return self._access.exclusive()

    def _reading(self) -> AbstractContextManager[None]:
        return self._access.reading(self._lock, self._reload)

    def _writing(self) -> AbstractContextManager[None]:
        return self._access.writing(self._lock, self._reload)

    def _reload(self) -> None:
        """Load what another replica wrote (its writes are whole: nothing to repair)."""
        self._roots.clear()
        self._files.clear()
        self._load(reconcile=False)

    # ----------------------------------------------------------------- reading

    @property
    def root_version(self) -> int:
        with self._reading():
            return self._root.signed.version

    def pinned_root(self) -> bytes:
        """The current root.json, for a device to pin at enrolment."""
        with self._reading():
            return self._files["root.json"]

    def target_names(self) -> list[str]:
        with self._reading():
            return self._models.target_names()

    def metadata_for(
        self,
        device_root_version: int,
        target: str | None = None,
        targets_version: int | None = None,
    ) -> list[tuple[str, bytes]]:
        """What a device at ``device_root_version`` needs: newer roots, then the top roles
        (targets.json left out when the device says it has this version), and for
        ``target``, its shard, its model's role and its manifest (nothing of another
        model's but the shard's delegation)."""
        with self._reading():
            newest = self._root.signed.version
            first = max(device_root_version, 0) + 1
            files = [(f"{v}.root.json", self._roots[v]) for v in range(first, newest + 1)]
            top = ["timestamp.json", "snapshot.json"]
            if targets_version != self._targets.signed.version:
                top.append("targets.json")
            files += [(n, self._files[n]) for n in top]
            return files if target is None else files + self._models.bundle(target)

    def manifest(self, target: str) -> dict[str, Any] | None:
        """The signed manifest of ``target`` as a mapping; None for an unknown target."""
        with self._reading():
            data = self._models.manifest(target)
        fields = json.loads(data) if data is not None else None
        return fields if isinstance(fields, dict) else None

    def keys(self) -> dict[str, dict[str, Any]]:
        """Per role: threshold, key ids, and how many of the private keys are here."""
        with self._reading():
            out: dict[str, dict[str, Any]] = {}
            for role in TOP_ROLES:
                r = self._root.signed.roles[role]
                here = {s.public_key.keyid for s in self._signers.get(role, [])}
                out[role] = {
                    "threshold": r.threshold,
                    "keyids": sorted(r.keyids),
                    "keys_here": len(here & set(r.keyids)),
                }
            director = self._root.signed.unrecognized_fields[DIRECTOR_FIELD]
            out["director"] = {
                "threshold": director["threshold"],
                "keyids": sorted(director["keys"]),
                "keys_here": len(self._signers.get("director", [])),
            }
            out["root"]["version"] = self._root.signed.version
            out["root"]["expires"] = self._root.signed.expires.isoformat()
            return out

    # ----------------------------------------------------------------- writing

    def add_target(self, name: str, data: bytes, custom: Mapping[str, Any]) -> None:
        """Add or replace target ``name`` (``custom``: its manifest), then re-sign its
        model's role, snapshot and timestamp (and targets, for a new model).

        Raises:
            TrustError: METADATA_INVALID for a bad name or custom fields that are not JSON.
            OSError: the metadata could not be written.
        """
        self.add_targets([(name, data, custom)])

    def add_targets(self, items: list[tuple[str, bytes, Mapping[str, Any]]]) -> None:
        """:meth:`add_target` for several targets, signed once (a bench, an import)."""
        prepared = []
        for name, data, custom in items:
            first = name.split("/", 1)[0]
            if not 0 < len(name) <= MAX_TARGET_NAME or not first or name.endswith(MANIFEST_SUFFIX):
                raise TrustError(Reason.METADATA_INVALID, f"bad target name {name!r:.80}")
            try:
                text = manifest_text(custom)
            except (TypeError, ValueError) as e:
                raise TrustError(Reason.METADATA_INVALID, f"custom fields of {name}: {e}") from e
            prepared.append((name, TargetFile.from_data(name, data, ["sha256"]), text))
        with self._writing():
            top = self._targets.signed
            changes = [
                self._models.add(
                    top, name, target, text,
                    threshold=self._threshold("targets"), lifetime=self._expiry.targets,
                )
                for name, target, text in prepared
            ]  # fmt: skip
            roles = {role for changed, _ in changes for role in changed}
            grew = any(top_changed for _, top_changed in changes)
            self._publish("targets" if grew else "snapshot", roles=sorted(roles))

    def refresh_timestamp(self, min_remaining_s: float) -> bool:
        """Re-sign the timestamp if it expires within ``min_remaining_s`` seconds."""
        with self._writing():
            if remaining(self._timestamp.signed) > min_remaining_s:
                return False
            self._publish("timestamp")
            return True

    def refresh_expiring(self, fraction: float = 0.5) -> list[str]:
        """Re-sign every online role with less than ``fraction`` of its lifetime left.

        The hub calls this on a timer, so a device is never refused for a freeze the hub
        caused itself. Root is renewed only if its keys are here (else it is logged by the
        caller through the returned ``root_expiring``).

        Returns:
            the roles re-signed (``"root"`` included when renewed).
        """
        renewed: list[str] = []
        with self._writing():
            low = fraction * self._expiry.targets
            models = sorted(r for r, md in self._models.roles.items() if remaining(md.signed) < low)
            for role in ONLINE_ROLES:
                md = getattr(self, f"_{role}")
                if remaining(md.signed) < fraction * getattr(self._expiry, role) or (
                    models and role == "snapshot"
                ):
                    self._publish(role, roles=models)
                    renewed += [*models, *ONLINE_ROLES[ONLINE_ROLES.index(role) :]]
                    break  # _publish re-signed every later role too
            root_low = remaining(self._root.signed) < fraction * self._expiry.root
            if root_low and self._have_threshold("root"):
                self._new_root(lambda root: None)
                renewed.append("root")
        return renewed

    def root_expires(self) -> datetime:
        with self._reading():
            return self._root.signed.expires

    def rotate(
        self, role: str, *, threshold: int | None = None, keys: int | Sequence[Signer] | None = None
    ) -> int:
        """Replace every key of ``role`` with new ones; sign a new root with the old one.

        Root N+1 is signed by the old root keys (and, when rotating root, by the new
        ones), so devices that trust N accept it. The role's metadata is re-signed with
        its new keys at once, and its old private keys are deleted.

        Args:
            role: root, targets, snapshot, timestamp or director.
            threshold: signatures the role needs from now on (default: unchanged).
            keys: new keys to make (default: as many as the role has now, and at least
                ``threshold``), or the new keys, made elsewhere (hub/trust/token_signer.py).

        Returns:
            the new root version.

        Raises:
            RepositoryError: unknown role, bad threshold, or the root keys are not here.
        """
        if role not in ROLES:
            raise RepositoryError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        with self._writing():
            self._need_root_keys(f"rotating {role}")
            need = threshold or self._threshold(role)
            made = list(keys) if isinstance(keys, Sequence) else []
            count = len(made) or (keys if isinstance(keys, int) else 0)
            count = count or max(need, len(self._role_keyids(role)))
            check_plan(role, need, count)
            new = made or [CryptoSigner.generate_ed25519() for _ in range(count)]
            old = list(self._signers.get(role, []))

            def change(root: Root) -> None:
                if role == "director":
                    root.unrecognized_fields[DIRECTOR_FIELD] = director_field(new, need)
                    return
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                for s in new:
                    root.add_key(s.public_key, role)
                root.roles[role].threshold = need

            # new keys on disk first: a crash before the root is written leaves spare keys
            for s in new:
                self._keys.save(role, s)
            self._new_root(change, extra_signers=new if role == "root" else [])
            self._signers[role] = new
            for s in old:
                self._keys.delete(role, s.public_key.keyid)
            roles: list[str] = []
            if role == "targets":  # the shard and model roles: signed by the targets keys
                self._models.set_keys(self._targets.signed, new, need)
                roles = sorted(self._models.roles)
            if is_online(role):
                self._publish(role, roles=roles)
            return self._root.signed.version

    def renew_root(self) -> int:
        """Sign root N+1 unchanged but for a fresh expiry; the new version.

        Raises:
            RepositoryError: the root keys are not here.
        """
        with self._writing():
            self._need_root_keys("renewing the root")
            self._new_root(lambda root: None)
            return self._root.signed.version

    def _need_root_keys(self, what: str) -> None:
        if not self._have_threshold("root"):
            raise RepositoryError(
                f"{what} needs {self._threshold('root')} root key(s); "
                f"{len(self._signers.get('root', []))} usable in {self._keys.root_keys_dir}"
            )

    def director_signers(self) -> list[Signer]:
        """The director's signers (deploy and rollback commands)."""
        with self._reading():
            return list(self._signers["director"])

    # ----------------------------------------------------------------- creating, loading

    def _init(self, plan: Mapping[str, tuple[int, int]]) -> None:
        """Make the keys (``plan``: role -> (threshold, keys)) and sign root v1."""
        self._keys.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._meta_dir.mkdir(parents=True, exist_ok=True)
        for role in ROLES:
            self._signers[role] = [CryptoSigner.generate_ed25519() for _ in range(plan[role][1])]
            for s in self._signers[role]:
                self._keys.save(role, s)
        root = Root(expires=expires_in(self._expiry.root), consistent_snapshot=False)
        for role in TOP_ROLES:
            for s in self._signers[role]:
                root.add_key(s.public_key, role)
            root.roles[role].threshold = plan[role][0]
        root.unrecognized_fields[DIRECTOR_FIELD] = director_field(
            self._signers["director"], plan["director"][0]
        )
        self._targets = Metadata(Targets(expires=expires_in(self._expiry.targets)))
        self._targets.signed.delegations = empty_delegations(self._signers["targets"])
        self._snapshot = Metadata(Snapshot(expires=expires_in(self._expiry.snapshot)))
        self._timestamp = Metadata(Timestamp(expires=expires_in(self._expiry.timestamp)))
        self._publish("targets", bump=False)
        # root.json last: its presence is what marks a complete repository
        self._store_root(Metadata(root), self._signers["root"])

    def _load(self, *, reconcile: bool = True) -> None:
        try:
            self._root = parse_metadata(Root, self._read("root.json"))
            for v in range(1, self._root.signed.version + 1):
                self._roots[v] = (self._meta_dir / f"{v}.root.json").read_bytes()
            self._files["root.json"] = self._roots[self._root.signed.version]
            self._targets = parse_metadata(Targets, self._read("targets.json"))
            self._snapshot = parse_metadata(Snapshot, self._read("snapshot.json"))
            self._timestamp = parse_metadata(Timestamp, self._read("timestamp.json"))
            self._models.load(self._targets.signed)
            for role in ROLES:
                self._signers[role] = self._load_signers(role)
                if role != "root" and len(self._signers[role]) < self._threshold(role):
                    raise ValueError(
                        f"fewer {role} keys in {self._keys.keys_dir} than its threshold"
                    )
        except (OSError, tuf_errors.RepositoryError, ValueError, KeyError) as e:
            raise TrustError(Reason.METADATA_INVALID, f"cannot open {self._meta_dir}: {e}") from e
        if reconcile:
            self._upgrade()
            self._reconcile()

    # ----------------------------------------------------------------- keys

    def _role_keyids(self, role: str) -> set[str]:
        if role == "director":
            return set(self._root.signed.unrecognized_fields[DIRECTOR_FIELD]["keys"])
        return set(self._root.signed.roles[role].keyids)

    def _threshold(self, role: str) -> int:
        if role == "director":
            return int(self._root.signed.unrecognized_fields[DIRECTOR_FIELD]["threshold"])
        return self._root.signed.roles[role].threshold

    def _load_signers(self, role: str) -> list[Signer]:
        """The private keys of ``role`` that are here and that root lists for it."""
        return self._keys.load(role, self._role_keyids(role))

    def _have_threshold(self, role: str) -> bool:
        if role == "root" and not self._signers.get("root"):
            self._signers["root"] = self._load_signers("root")  # plugged in since start
        return len(self._signers.get(role, [])) >= self._threshold(role)

    # ----------------------------------------------------------------- signing

    def _store_root(self, root: Metadata[Root], signers: list[Signer]) -> None:
        data = self._sign(root, signers)
        version = root.signed.version
        write_atomic(self._meta_dir / f"{version}.root.json", data)
        write_atomic(self._meta_dir / "root.json", data)
        self._root = root
        self._roots[version] = data
        self._files["root.json"] = data

    def _new_root(
        self, change: Callable[[Root], None], extra_signers: list[Signer] | None = None
    ) -> None:
        """Sign root N+1 (after ``change(root)``) with the root keys of N and of N+1."""
        root = parse_metadata(Root, self._files["root.json"])
        change(root.signed)
        root.signed.version += 1
        root.signed.expires = expires_in(self._expiry.root)
        signers = {s.public_key.keyid: s for s in [*self._signers["root"], *(extra_signers or [])]}
        self._store_root(root, list(signers.values()))
