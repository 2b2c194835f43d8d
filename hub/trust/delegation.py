"""Each model's delegated targets role and the manifest files its targets point at (ADR 0037).

Top-level ``targets`` delegates the paths of model ``m`` (``m/*/*``) to role ``model-m``
(shared/delegation.py names them). The delegated roles are signed by the targets role's
own keys, with its threshold: ``delegations.keys`` lists the targets keys, so rotating
targets (hub/trust/repository.py) re-signs every model role too, and no device needs a
new root for it.

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
    manifest_target,
    path_patterns,
    role_file,
    role_name,
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
        """Read every role ``top`` delegates (a role never signed yet is skipped).

        Raises:
            OSError, ValueError: a role's file is unreadable or not targets metadata.
        """
        self.roles.clear()
        self.files.clear()
        for name in delegated(top):
            path = self._meta_dir / role_file(name)
            data = path.read_bytes()
            self.roles[name] = parse_metadata(Targets, data)
            self.files[role_file(name)] = data

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
    ) -> str:
        """Put ``target`` (and its manifest) in its model's role; delegate it if new.

        The manifest file is written before any metadata that names it. A new role gets
        the targets keys and ``threshold``, and ``lifetime`` seconds. Returns the role.
        """
        role = self._delegate(top, name, threshold, lifetime)
        manifest_file = TargetFile.from_data(manifest_target(name), manifest, ["sha256"])
        self._manifests_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self._manifests_dir / manifest_file.hashes["sha256"], manifest)
        target.unrecognized_fields["custom"] = {MANIFEST_FIELD: manifest_file.path}
        signed = self.roles[role].signed
        signed.targets[name] = target
        signed.targets[manifest_file.path] = manifest_file
        return role

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
        """Hand every model role to ``signers`` with ``threshold`` (targets was rotated)."""
        delegations = top.delegations
        assert delegations is not None and delegations.roles is not None
        delegations.keys = {s.public_key.keyid: s.public_key for s in signers}
        for role in delegations.roles.values():
            role.keyids = sorted(delegations.keys)
            role.threshold = threshold

    def _delegate(self, top: Targets, name: str, threshold: int, lifetime: float) -> str:
        delegations = top.delegations
        assert delegations is not None and delegations.roles is not None
        role = role_name(name)
        patterns = path_patterns(name)
        found = delegations.roles.get(role)
        if found is None:
            found = DelegatedRole(role, sorted(delegations.keys), threshold, True, patterns)
            delegations.roles[role] = found
            self.roles[role] = Metadata(Targets(version=1, expires=expires_in(lifetime)))
        else:
            found.paths = [
                *(found.paths or []),
                *(p for p in patterns if p not in (found.paths or [])),
            ]
        return role

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
        for name, target in moved.items():
            custom = dict(target.custom or {})
            text = custom.get(_CUSTOM_JSON)
            fields = json.loads(text) if isinstance(text, str) else custom
            if not isinstance(fields, dict):
                raise ValueError(f"custom fields of {name} are not an object")
            target.unrecognized_fields.pop("custom", None)
            self.add(
                top, name, target, manifest_text(fields), threshold=threshold, lifetime=lifetime
            )
        return sorted({role_name(n) for n in moved})


def delegated(top: Targets) -> Iterable[str]:
    """The names of the roles ``top`` delegates to (none in the old layout)."""
    if top.delegations is None or top.delegations.roles is None:
        return []
    return list(top.delegations.roles)
