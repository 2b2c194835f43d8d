"""TUF trust on the device: verify staged metadata and files (DESIGN §4).

Nothing here is home-made cryptography or a home-made update protocol: the hub builds and
signs TUF metadata with ``tuf.api.metadata`` (hub/trust/repository.py); the device verifies it
with ``tuf.ngclient.Updater``, fed from the unverified staging area (files that arrived
over MQTT) by a ``FetcherInterface`` that answers from memory.

A model target is listed by its model's delegated role (ADR 0037, shared/delegation.py);
its ``custom`` field names a manifest target, whose bytes (the manifest as JSON text, ADR
0002: TUF signs canonical JSON, which has no floats) travel in the same bundle and are
checked against the sha256 and length the role signs; :class:`VerifiedTarget` hands back
the decoded mapping. (A target whose ``custom`` holds ``{"json": "<text>"}`` inline, the
layout before ADR 0037, still reads.) The trusted root also carries the director's
public keys (the keys that sign deploy and rollback commands, shared/director.py).

Exceptions::

    TrustError(reason, detail)          reason is a shared.reasons.Reason
        BAD_SIGNATURE       metadata not signed by a threshold of trusted keys (a forged,
                            revoked or unknown key, or too few keys)
        EXPIRED_METADATA    final root, timestamp, snapshot or targets past its expiry
        METADATA_ROLLBACK   a version older than the device has seen, or a mixed bundle
        METADATA_MISMATCH   a role's file differs from the version, length or hashes the
                            role above signed for it (mix-and-match)
        METADATA_INVALID    unparsable, missing, over-long or inconsistent metadata
        TARGET_NOT_FOUND    the signed targets do not list the name
        LENGTH_MISMATCH     a staged file differs from the signed length
        HASH_MISMATCH       a staged file differs from the signed sha256
        STORAGE_ERROR       the device could not read or write its own files
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import (
    Metadata,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from shared.atomic import write_atomic
from shared.delegation import MANIFEST_FIELD, bundle_name, manifest_target
from shared.director import DIRECTOR_FIELD, DirectorKeys
from shared.reasons import Reason

if TYPE_CHECKING:
    from tuf.ngclient.updater import Updater

__all__ = [
    "DeviceVerifier",
    "TrustError",
    "VerifiedTarget",
    "parse_metadata",
]

READ_BLOCK: Final = 64 * 2**10  # bytes read at a time when hashing a staged file
_CUSTOM_JSON: Final = "json"  # key of the JSON text inside a target's custom field
# python-tuf: "Expected <role> v<N>, got v<M>." (a role unlike what the snapshot lists)
_ROLE_VERSION_MISMATCH: Final = re.compile(r"Expected \S+ v\d+, got v\d+")

_SignedT = TypeVar("_SignedT", Root, Targets, Snapshot, Timestamp)


class TrustError(Exception):
    """A refusal on trust grounds.

    Attributes:
        reason: the stable code the agent reports to the hub.
        detail: what exactly was wrong, for the log line.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VerifiedTarget:
    """A target as the verified targets metadata describes it."""

    name: str
    length: int  # bytes
    sha256: str  # hex
    custom: Mapping[str, Any]  # the target's custom fields (the model manifest)


class DeviceVerifier:
    """Verifies staged metadata against this device's trusted metadata, with tuf.ngclient.

    ``metadata_dir`` is this device's own trusted-metadata directory: its rollback memory.
    Never share one between devices or threads.
    """

    def __init__(self, metadata_dir: Path, pinned_root: bytes | None = None) -> None:
        """Open the device's trusted metadata, pinning ``pinned_root`` if it has none yet.

        Raises:
            TrustError: METADATA_INVALID if there is no trusted root and none is given, or
                the root is not root metadata; STORAGE_ERROR if the directory is unusable.
        """
        self._dir = metadata_dir
        root_path = metadata_dir / "root.json"
        try:
            metadata_dir.mkdir(parents=True, exist_ok=True)
            self._director: tuple[int, DirectorKeys] | None = None
            if root_path.exists():
                self._root_version = _root_version(root_path.read_bytes())
                return
            if pinned_root is None:
                raise TrustError(Reason.METADATA_INVALID, f"no trusted root in {metadata_dir}")
            self._root_version = _root_version(pinned_root)
            # not fsynced, like tuf's own writes here: a lost pin is re-pinned at next start
            write_atomic(root_path, pinned_root, durable=False)
        except OSError as e:
            raise TrustError(Reason.STORAGE_ERROR, f"{metadata_dir}: {e}") from e

    @property
    def root_version(self) -> int:
        """Version of the trusted root (what a ``fetch_meta`` request carries)."""
        return self._root_version

    def trusted_targets(self) -> tuple[int, float] | None:
        """Version and expiry (epoch seconds) of the trusted top-level targets; None if
        there is none or it is unreadable (the hub then sends it)."""
        try:
            signed = parse_metadata(Targets, (self._dir / "targets.json").read_bytes()).signed
        except (OSError, tuf_errors.RepositoryError, ValueError):
            return None
        return signed.version, signed.expires.timestamp()

    def director_keys(self) -> DirectorKeys:
        """The director's keys as the trusted root lists them (none in a root without).

        Raises:
            TrustError: STORAGE_ERROR or METADATA_INVALID if the trusted root is unreadable.
        """
        if self._director is None or self._director[0] != self._root_version:
            try:
                root = parse_metadata(Root, (self._dir / "root.json").read_bytes()).signed
            except OSError as e:
                raise TrustError(Reason.STORAGE_ERROR, f"{self._dir}: {e}") from e
            except (tuf_errors.RepositoryError, ValueError) as e:
                raise TrustError(Reason.METADATA_INVALID, f"trusted root: {e}") from e
            keys = DirectorKeys.from_root_field(root.unrecognized_fields.get(DIRECTOR_FIELD))
            self._director = (self._root_version, keys)
        return self._director[1]

    def refresh(self, files: Mapping[str, bytes]) -> None:
        """Run the TUF client workflow over ``files`` (walk newer roots, update the rest).

        Raises:
            TrustError: with the reason of the refusal (see the module docstring).
        """
        self._run(files, None)

    def verify_metadata(self, files: Mapping[str, bytes], target_name: str) -> VerifiedTarget:
        """Run the TUF client workflow over ``files`` and look up ``target_name``.

        Newer roots, timestamp, snapshot and targets that verify become this device's
        trusted metadata (as TUF persists them), even if a later step refuses.

        Args:
            files: staged metadata by file name (``N.root.json``, ``timestamp.json``, ...).
            target_name: the target to look up in the verified targets.

        Raises:
            TrustError: with the reason of the refusal (see the module docstring).
        """
        found = self._run(files, target_name)
        if found is None:
            raise TrustError(Reason.TARGET_NOT_FOUND, f"{target_name!r} is not a signed target")
        return _verified_target(*found)

    def _run(
        self, files: Mapping[str, bytes], target_name: str | None
    ) -> tuple[TargetFile, bytes | None] | None:
        # deferred: tuf.ngclient (with urllib3) costs ~5 MB of RSS, and only a deployment's
        # metadata needs it; a device that serves since its last boot never loads it
        from tuf.ngclient.updater import Updater

        from shared.trust_fetch import STAGING_URL, StagingFetcher

        fetcher = StagingFetcher(files)
        self._check_kept_targets(files)
        try:
            # bootstrap=None: the trust anchor is root.json in metadata_dir (written at
            # enrolment), not bytes passed in; tuf 7 wants that choice made explicitly.
            updater = Updater(str(self._dir), STAGING_URL, fetcher=fetcher, bootstrap=None)
            updater.refresh()
            info = updater.get_targetinfo(target_name) if target_name else None
            if info is None:
                return None
            return info, _manifest(updater, info, files)
        except tuf_errors.UnsignedMetadataError as e:
            raise TrustError(Reason.BAD_SIGNATURE, str(e)) from e
        except tuf_errors.ExpiredMetadataError as e:
            raise TrustError(Reason.EXPIRED_METADATA, str(e)) from e
        except tuf_errors.BadVersionNumberError as e:
            raise TrustError(_version_reason(str(e)), str(e) or type(e).__name__) from e
        except tuf_errors.LengthOrHashMismatchError as e:
            raise TrustError(Reason.METADATA_MISMATCH, str(e)) from e
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, ValueError) as e:
            # includes LengthOrHashMismatchError and DeserializationError
            raise TrustError(Reason.METADATA_INVALID, f"{type(e).__name__}: {e}") from e
        except OSError as e:
            raise TrustError(Reason.STORAGE_ERROR, f"{self._dir}: {e}") from e
        finally:
            # TUF asks for root N+1 only once it trusts root N (spec 5.3.4-5.3.9).
            if fetcher.root_asked:
                self._root_version = fetcher.root_asked - 1

    def _check_kept_targets(self, files: Mapping[str, bytes]) -> None:
        """The hub leaves targets.json out when the device said it has it (ADR 0037): if
        the kept copy has expired since, refuse it as TUF would had it been sent."""
        if "targets.json" in files:
            return
        try:
            kept = parse_metadata(Targets, (self._dir / "targets.json").read_bytes())
        except (OSError, tuf_errors.RepositoryError, ValueError):
            return  # none kept: TUF says the file is missing
        if kept.signed.is_expired():
            detail = "New targets is expired (the kept copy: the hub sent none newer)"
            raise TrustError(Reason.EXPIRED_METADATA, detail)

    def verify_file(self, target: VerifiedTarget, path: Path) -> None:
        """Check a staged file against the verified length and sha256.

        Reads at most ``target.length + 1`` bytes.

        Raises:
            TrustError: LENGTH_MISMATCH, HASH_MISMATCH, or STORAGE_ERROR if unreadable.
        """
        digest = hashlib.sha256()
        size = 0
        try:
            with path.open("rb") as f:
                while size <= target.length:
                    block = f.read(min(READ_BLOCK, target.length + 1 - size))
                    if not block:
                        break
                    size += len(block)
                    digest.update(block)
        except OSError as e:
            raise TrustError(Reason.STORAGE_ERROR, f"{path}: {e}") from e
        if size != target.length:
            got = f"more than {target.length}" if size > target.length else str(size)
            raise TrustError(
                Reason.LENGTH_MISMATCH, f"{target.name}: {got} bytes, signed {target.length}"
            )
        if digest.hexdigest() != target.sha256:
            raise TrustError(Reason.HASH_MISMATCH, f"{target.name}: sha256 differs from signed")


def _version_reason(message: str) -> Reason:
    """A targets role whose version is not the one the snapshot lists (the snapshot lists
    versions only, ADR 0041) is a mix-and-match; any other version refusal a rollback."""
    if _ROLE_VERSION_MISMATCH.match(message):
        return Reason.METADATA_MISMATCH
    return Reason.METADATA_ROLLBACK


def parse_metadata(cls: type[_SignedT], data: bytes) -> Metadata[_SignedT]:
    """Parse metadata (signatures unchecked) and check its type.

    Raises:
        ValueError: the data is not ``cls`` metadata (DeserializationError for bad JSON).
    """
    md = Metadata[_SignedT].from_bytes(data)
    if not isinstance(md.signed, cls):
        raise ValueError(f"expected {cls.type} metadata, got {md.signed.type}")
    return md


def _root_version(data: bytes) -> int:
    try:
        return parse_metadata(Root, data).signed.version
    except (tuf_errors.RepositoryError, ValueError) as e:
        raise TrustError(Reason.METADATA_INVALID, f"trusted root: {e}") from e


def _manifest(updater: Updater, info: TargetFile, files: Mapping[str, bytes]) -> bytes | None:
    """The bytes of the manifest target ``info`` names, checked against its signed sha256
    and length (None for an old-layout target, its manifest inline).

    Raises:
        tuf.api.exceptions.RepositoryError: no such signed target, or it is not staged
            (a LengthOrHashMismatchError when the staged bytes are not the signed ones).
    """
    custom = info.custom
    name = custom.get(MANIFEST_FIELD) if isinstance(custom, dict) else None
    if name is None:
        return None
    if name != manifest_target(info.path):
        raise tuf_errors.RepositoryError(f"{info.path}: manifest target {name!r:.80}")
    manifest = updater.get_targetinfo(name)
    data = files.get(bundle_name(name))
    if manifest is None or data is None:
        raise tuf_errors.RepositoryError(f"manifest {name} is not signed and staged")
    manifest.verify_length_and_hashes(data)
    return data


def _verified_target(info: TargetFile, manifest: bytes | None) -> VerifiedTarget:
    sha256 = info.hashes.get("sha256")
    custom = info.custom
    try:
        if sha256 is None:
            raise ValueError("no sha256 hash")
        if manifest is not None:
            text: str | bytes = manifest
        elif isinstance(custom, dict) and isinstance(custom.get(_CUSTOM_JSON), str):
            text = custom[_CUSTOM_JSON]
        else:
            raise ValueError(f"custom names no manifest target and holds no {_CUSTOM_JSON!r}")
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError("custom JSON is not an object")
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise TrustError(Reason.METADATA_INVALID, f"target {info.path}: {e}") from e
    return VerifiedTarget(name=info.path, length=info.length, sha256=sha256, custom=fields)
