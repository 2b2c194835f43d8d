"""The shard roles, each model's delegated targets role, and the manifest files its targets
point at (ADRs 0037, 0041).

Top-level ``targets`` delegates the paths of model ``m`` (``m/*/*``) to one of a fixed
number of shard roles (``shard-nn``, a hash bin on the model name), which delegates them to
role ``model-m`` (shared/delegation.py names them). Top-level targets then carries one
pattern per model, not a whole delegation. The shard and model roles are signed by the
targets role's own keys, with its threshold: each ``delegations.keys`` lists the targets
keys, so rotating targets (hub/trust/repository.py) re-signs every shard and model role
too, and no device needs a new root for it.

A model role lists, per artefact, the model file (``custom``: the manifest target's name)
and the manifest (its JSON text as a target of its own: sha256 and length signed in the
role). The manifest bytes are kept in ``manifests/<sha256>`` under the repository, and
travel to a device in the ``fetch_meta`` answer beside its role.

This module holds the metadata in memory and on disk; signing and the snapshot stay with
the repository, which decides what to re-sign when.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from securesystemslib.signer import Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    TargetFile,
    Targets,
)

from hub.trust.roles import expires_in
from shared.atomic import write_atomic
from shared.delegation import (
    MANIFEST_FIELD,
    ROLE_PREFIX,
    bundle_name,
    manifest_target,
    path_patterns,
    role_file,
    role_name,
    shard_name,
)
from shared.trust import parse_metadata

__all__ = ["ModelRoles", "empty_delegations", "manifest_text"]

_CUSTOM_JSON: Final = "json"  # an old-layout target's custom: {"json": "<manifest text>"}


def manifest_text(custom: Mapping[str, Any]) -> bytes:
    """A manifest's signed bytes: canonical JSON (sorted keys, no spaces, no NaN).

    Raises:
        TypeError, ValueError: ``custom`` is not JSON-able.
    """
    text = json.dumps(dict(custom), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode()


def empty_delegations(signers: list[Signer]) -> Delegations:
    """Top-level targets' delegations before any model: the targets keys, no role yet."""
    return Delegations(keys={s.public_key.keyid: s.public_key for s in signers}, roles={})


class ModelRoles:
    """The model roles of one repository: parsed metadata, signed bytes, manifest files."""

    def __init__(self, meta_dir: Path, manifests_dir: Path) -> None:
        self._meta_dir = meta_dir
        self._manifests_dir = manifests_dir
        self.roles: dict[str, Metadata[Targets]] = {}  # role name -> metadata
        self.files: dict[str, bytes] = {}  # role file name -> signed bytes

    def load(self, top: Targets) -> None:
        """Read every role ``top`` delegates, and every role those delegate (the shards'
        model roles).

        Raises:
            OSError, ValueError: a role's file is unreadable or not targets metadata.
        """
        self.roles.clear()
        self.files.clear()
        pending = list(delegated(top))
        while pending:
            name = pending.pop()
            data = (self._meta_dir / role_file(name)).read_bytes()
            self.roles[name] = parse_metadata(Targets, data)
            self.files[role_file(name)] = data
            pending += delegated(self.roles[name].signed)

    def target_names(self) -> list[str]:
        """Every model target (manifest targets left out)."""
        return sorted(
            name
            for md in self.roles.values()
            for name, t in md.signed.targets.items()
            if MANIFEST_FIELD in (t.custom or {})
        )

    def add(
        self,
        top: Targets,
        name: str,
        target: TargetFile,
        manifest: bytes,
        *,
        threshold: int,
        lifetime: float,
    ) -> tuple[list[str], bool]:
        """Put ``target`` (and its manifest) in its model's role; delegate it if new.

        The manifest file is written before any metadata that names it. A new role gets
        the targets keys and ``threshold``, and ``lifetime`` seconds. Returns the roles
        changed (the model's, and its shard's for a new model) and whether ``top`` changed.
        """
        roles, top_changed = self._delegate(top, name, threshold, lifetime)
        manifest_file = TargetFile.from_data(manifest_target(name), manifest, ["sha256"])
        self._manifests_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self._manifests_dir / manifest_file.hashes["sha256"], manifest)
        target.unrecognized_fields["custom"] = {MANIFEST_FIELD: manifest_file.path}
        signed = self.roles[role_name(name)].signed
        signed.targets[name] = target
        signed.targets[manifest_file.path] = manifest_file
        return roles, top_changed

    def bundle(self, target: str) -> list[tuple[str, bytes]]:
        """What a device needs besides the top roles for ``target``: its shard, its model's
        role and its manifest (nothing for an unknown model)."""
        if role_file(role_name(target)) not in self.files:
            return []
        roles = (role_file(shard_name(target)), role_file(role_name(target)))
        files = [(f, self.files[f]) for f in roles if f in self.files]  # no shard: not moved yet
        manifest = self.manifest(target)
        if manifest is not None:
            files.append((bundle_name(manifest_target(target)), manifest))
        return files

    def manifest(self, name: str) -> bytes | None:
        """The signed manifest bytes of target ``name``; None if it is not a model target."""
        md = self.roles.get(role_name(name))
        entry = md.signed.targets.get(manifest_target(name)) if md is not None else None
        if entry is None:
            return None
        try:
            return (self._manifests_dir / entry.hashes["sha256"]).read_bytes()
        except OSError:
            return None

    def set_keys(self, top: Targets, signers: list[Signer], threshold: int) -> None:
        """Hand every shard and model role to ``signers`` with ``threshold`` (targets
        was rotated)."""
        keys = {s.public_key.keyid: s.public_key for s in signers}
        for signed in [top, *(md.signed for md in self.roles.values())]:
            if signed.delegations is None or signed.delegations.roles is None:
                continue
            signed.delegations.keys = dict(keys)
            for role in signed.delegations.roles.values():
                role.keyids = sorted(keys)
                role.threshold = threshold

    def _delegate(
        self, top: Targets, name: str, threshold: int, lifetime: float
    ) -> tuple[list[str], bool]:
        """Delegate ``name``'s patterns from top to its shard and from the shard to its
        model's role (each made if new). Returns the roles changed and whether top did."""
        assert top.delegations is not None
        role, shard = role_name(name), shard_name(name)
        patterns = path_patterns(name)
        top_changed = _widen(top.delegations, shard, patterns, threshold)
        changed = [role]
        shard_delegations = self._role(shard, lifetime, top.delegations).delegations
        assert shard_delegations is not None
        if _widen(shard_delegations, role, patterns, threshold):
            changed.append(shard)
        self._role(role, lifetime, None)
        return changed, top_changed

    def _role(self, name: str, lifetime: float, keys_from: Delegations | None) -> Targets:
        """Role ``name``'s metadata, made (version 1) if new; a shard (``keys_from``: the
        delegations whose keys it uses) gets delegations of its own."""
        if name not in self.roles:
            self.roles[name] = Metadata(Targets(version=1, expires=expires_in(lifetime)))
            if keys_from is not None:
                self.roles[name].signed.delegations = Delegations(
                    keys=dict(keys_from.keys), roles={}
                )
        return self.roles[name].signed

    def reshard(self, top: Targets, *, threshold: int, lifetime: float) -> list[str]:
        """Move the model roles that top-level targets delegates itself (ADR 0037's
        layout) under their shards, unchanged. Returns the roles changed (empty: none)."""
        assert top.delegations is not None and top.delegations.roles is not None
        changed: set[str] = set()
        for direct in [r for r in top.delegations.roles.values() if r.name.startswith(ROLE_PREFIX)]:
            del top.delegations.roles[direct.name]
            shard = shard_name(direct.name.removeprefix(ROLE_PREFIX))
            _widen(top.delegations, shard, list(direct.paths or []), threshold)
            shard_delegations = self._role(shard, lifetime, top.delegations).delegations
            assert shard_delegations is not None and shard_delegations.roles is not None
            shard_delegations.roles[direct.name] = direct
            changed.add(shard)
        return sorted(changed)

    def upgrade(
        self, top: Targets, signers: list[Signer], *, threshold: int, lifetime: float
    ) -> list[str]:
        """Move an old layout's targets (every one in top-level targets, each with its
        manifest inline) into model roles. Returns the roles made (empty: nothing to do).

        Raises:
            ValueError: a target's custom field is not a JSON object.
        """
        if top.delegations is None:
            top.delegations = empty_delegations(signers)
        moved = dict(top.targets)
        top.targets.clear()
        changed: set[str] = set()
        for name, target in moved.items():
            custom = dict(target.custom or {})
            text = custom.get(_CUSTOM_JSON)
            fields = json.loads(text) if isinstance(text, str) else custom
            if not isinstance(fields, dict):
                raise ValueError(f"custom fields of {name} are not an object")
            target.unrecognized_fields.pop("custom", None)
            roles, _ = self.add(
                top, name, target, manifest_text(fields), threshold=threshold, lifetime=lifetime
            )
            changed.update(roles)
        return sorted(changed)


def _widen(delegations: Delegations, role: str, patterns: list[str], threshold: int) -> bool:
    """Delegate ``patterns`` to ``role`` (made, with the delegations' keys, if new).
    Returns whether anything changed."""
    assert delegations.roles is not None
    found = delegations.roles.get(role)
    if found is None:
        keyids = sorted(delegations.keys)
        delegations.roles[role] = DelegatedRole(role, keyids, threshold, True, patterns)
        return True
    missing = [p for p in patterns if p not in (found.paths or [])]
    found.paths = [*(found.paths or []), *missing]
    return bool(missing)


def delegated(top: Targets) -> Iterable[str]:
    """The names of the roles ``top`` delegates to (none in the old layout)."""
    if top.delegations is None or top.delegations.roles is None:
        return []
    return list(top.delegations.roles)
