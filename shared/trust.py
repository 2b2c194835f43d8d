"""TUF trust on both sides: the hub's repository and the device's verifier (DESIGN §4).

Nothing here is home-made cryptography or a home-made update protocol: the hub builds and
signs TUF metadata with ``tuf.api.metadata``; the device verifies it with
``tuf.ngclient.Updater``, fed from the unverified staging area (files that arrived over
MQTT) by a ``FetcherInterface`` that answers from memory.

Two things differ from a stock TUF repository, both forced by the transport or by TUF:

- ``consistent_snapshot`` is off: fixed file names make the staging lookup a dict lookup.
- A target's ``custom`` field holds ``{"json": "<the custom mapping as JSON text>"}``.
  TUF signs OLPC canonical JSON, which has no floats, and a model manifest is full of them
  (tolerances, golden outputs, drift baselines). The text is covered by the signature like
  any other field; :class:`VerifiedTarget` hands back the decoded mapping.

Exceptions::

    TrustError(reason, detail)          reason is a shared.reasons.Reason
        BAD_SIGNATURE       metadata not signed by a threshold of trusted keys
        EXPIRED_METADATA    final root, timestamp, snapshot or targets past its expiry
        METADATA_ROLLBACK   a version older than the device has seen, or a mixed bundle
        METADATA_INVALID    unparsable, missing, over-long or inconsistent metadata;
                            also a hub repository that cannot be opened or bad target input
        TARGET_NOT_FOUND    the signed targets do not list the name
        LENGTH_MISMATCH     a staged file differs from the signed length
        HASH_MISMATCH       a staged file differs from the signed sha256
        STORAGE_ERROR       the device could not read or write its own files
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from cryptography.hazmat.primitives.serialization import load_pem_private_key

# The documented import paths re-export without an __all__ that mypy can read (strict mypy
# says "does not explicitly export"); the defining modules are private, so keep the paths.
from securesystemslib.signer import CryptoSigner, Signer  # type: ignore[attr-defined]
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from shared.reasons import Reason

__all__ = ["DeviceVerifier", "Expiry", "TrustError", "TrustRepository", "VerifiedTarget"]

ROLES: Final = ("root", "targets", "snapshot", "timestamp")
MAX_TARGET_NAME: Final = 256  # characters; the protocol's short-string limit
READ_BLOCK: Final = 64 * 2**10  # bytes read at a time when hashing a staged file
_STAGING_URL: Final = "staging:///"  # base "URL" the Updater asks the staging fetcher for
_CUSTOM_JSON: Final = "json"  # key of the JSON text inside a target's custom field
_SERIALIZER: Final = JSONSerializer(compact=True)

_ChainRole = Literal["targets", "snapshot", "timestamp"]
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
class Expiry:
    """Lifetime of each role's metadata, in seconds, counted from each signing."""

    root: float = 365 * 86400
    targets: float = 90 * 86400
    snapshot: float = 7 * 86400
    timestamp: float = 1 * 86400

    def __post_init__(self) -> None:
        for role in ROLES:
            if not getattr(self, role) > 0:
                raise ValueError(f"expiry of {role} must be > 0 seconds")


@dataclass(frozen=True)
class VerifiedTarget:
    """A target as the verified targets metadata describes it."""

    name: str
    length: int  # bytes
    sha256: str  # hex
    custom: Mapping[str, Any]  # the target's custom fields (the model manifest)


# --------------------------------------------------------------------------- hub side


class TrustRepository:
    """The hub's TUF repository: one Ed25519 key per role, metadata files on disk.

    Layout under ``root_dir``::

        keys/{root,targets,snapshot,timestamp}.pem   PKCS#8 private keys, mode 0600
        metadata/N.root.json, root.json, targets.json, snapshot.json, timestamp.json

    Thread-safe: one lock covers every mutation and every read of the in-memory cache.
    """

    _root: Metadata[Root]
    _targets: Metadata[Targets]
    _snapshot: Metadata[Snapshot]
    _timestamp: Metadata[Timestamp]

    def __init__(self, root_dir: Path, expiry: Expiry) -> None:
        """Use :meth:`open_or_init`."""
        self._keys_dir = root_dir / "keys"
        self._meta_dir = root_dir / "metadata"
        self._expiry = expiry
        self._lock = threading.Lock()
        self._signers: dict[str, Signer] = {}
        self._roots: dict[int, bytes] = {}  # version -> N.root.json bytes
        self._files: dict[str, bytes] = {}  # root/targets/snapshot/timestamp.json -> bytes

    @classmethod
    def open_or_init(cls, root_dir: Path, *, expiry: Expiry = Expiry()) -> TrustRepository:
        """Open the repository in ``root_dir``, or create one with fresh keys.

        Args:
            root_dir: the repository's directory (created if missing).
            expiry: lifetimes applied to every metadata signed from now on.

        Raises:
            TrustError: METADATA_INVALID if an existing repository is incomplete or its keys
                do not match its root.
            OSError: the directory cannot be read or written.
        """
        repo = cls(root_dir, expiry)
        with repo._lock:
            if (repo._meta_dir / "root.json").exists():
                repo._load()
            else:
                repo._init()
        return repo

    @property
    def root_version(self) -> int:
        with self._lock:
            return self._root.signed.version

    def pinned_root(self) -> bytes:
        """The current root.json, for a device to pin at enrolment."""
        with self._lock:
            return self._files["root.json"]

    def target_names(self) -> list[str]:
        with self._lock:
            return sorted(self._targets.signed.targets)

    def add_target(self, name: str, data: bytes, custom: Mapping[str, Any]) -> None:
        """Add or replace target ``name``, then re-sign targets, snapshot and timestamp.

        Args:
            name: the target's path in TUF terms (what devices ask for).
            data: the whole file.
            custom: JSON-able fields signed with the target (the model manifest).

        Raises:
            TrustError: METADATA_INVALID for a bad name or custom fields that are not JSON.
            OSError: the metadata could not be written.
        """
        if not 0 < len(name) <= MAX_TARGET_NAME or name.startswith("/"):
            raise TrustError(Reason.METADATA_INVALID, f"bad target name {name!r:.80}")
        try:
            text = json.dumps(dict(custom), sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TrustError(Reason.METADATA_INVALID, f"custom fields of {name}: {e}") from e
        target = TargetFile.from_data(name, data, ["sha256"])
        target.unrecognized_fields["custom"] = {_CUSTOM_JSON: text}
        with self._lock:
            self._targets.signed.targets[name] = target
            self._publish("targets")

    def metadata_for(self, device_root_version: int) -> list[tuple[str, bytes]]:
        """What a device at ``device_root_version`` needs: newer roots, then the top roles."""
        with self._lock:
            newest = self._root.signed.version
            first = max(device_root_version, 0) + 1
            files = [(f"{v}.root.json", self._roots[v]) for v in range(first, newest + 1)]
            files += [
                (n, self._files[n]) for n in ("timestamp.json", "snapshot.json", "targets.json")
            ]
            return files

    def refresh_timestamp(self, min_remaining_s: float) -> bool:
        """Re-sign the timestamp if it expires within ``min_remaining_s`` seconds.

        Returns:
            whether a new timestamp was signed.
        """
        with self._lock:
            remaining = (self._timestamp.signed.expires - _now()).total_seconds()
            if remaining > min_remaining_s:
                return False
            self._publish("timestamp")
            return True

    # -- creating and loading (called with the lock held)

    def _init(self) -> None:
        self._keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._meta_dir.mkdir(parents=True, exist_ok=True)
        for role in ROLES:
            self._signers[role] = self._generate_signer(role)
        root = Root(expires=_expires_in(self._expiry.root), consistent_snapshot=False)
        for role in ROLES:
            root.add_key(self._signers[role].public_key, role)
        self._targets = Metadata(Targets(expires=_expires_in(self._expiry.targets)))
        self._snapshot = Metadata(Snapshot(expires=_expires_in(self._expiry.snapshot)))
        self._timestamp = Metadata(Timestamp(expires=_expires_in(self._expiry.timestamp)))
        self._publish("targets", bump=False)
        # root.json last: its presence is what marks a complete repository
        self._store_root(Metadata(root))

    def _load(self) -> None:
        try:
            self._root = _parse(Root, self._read("root.json"))
            for v in range(1, self._root.signed.version + 1):
                self._roots[v] = (self._meta_dir / f"{v}.root.json").read_bytes()
            self._files["root.json"] = self._roots[self._root.signed.version]
            self._targets = _parse(Targets, self._read("targets.json"))
            self._snapshot = _parse(Snapshot, self._read("snapshot.json"))
            self._timestamp = _parse(Timestamp, self._read("timestamp.json"))
            for role in ROLES:
                self._signers[role] = self._load_signer(role)
        except (OSError, tuf_errors.RepositoryError, ValueError) as e:
            raise TrustError(Reason.METADATA_INVALID, f"cannot open {self._meta_dir}: {e}") from e
        self._reconcile()

    def _read(self, filename: str) -> bytes:
        """Read a top-level metadata file and cache its bytes."""
        data = (self._meta_dir / filename).read_bytes()
        self._files[filename] = data
        return data

    def _reconcile(self) -> None:
        """Repair a chain left half-written by a crash between two file writes."""
        targets_meta = self._snapshot.signed.meta.get("targets.json")
        if targets_meta != MetaFile(
            self._targets.signed.version, length=len(self._files["targets.json"])
        ):
            self._publish("snapshot")
        elif self._timestamp.signed.snapshot_meta != MetaFile(
            self._snapshot.signed.version, length=len(self._files["snapshot.json"])
        ):
            self._publish("timestamp")

    # -- signing (kept small: key rotation will add signers per role and root signing by
    # the old and the new root keys)

    def _key_path(self, role: str) -> Path:
        return self._keys_dir / f"{role}.pem"

    def _generate_signer(self, role: str) -> CryptoSigner:
        signer = CryptoSigner.generate_ed25519()
        _write_atomic(self._key_path(role), signer.private_bytes, mode=0o600)
        return signer

    def _load_signer(self, role: str) -> CryptoSigner:
        key = load_pem_private_key(self._key_path(role).read_bytes(), password=None)
        signer = CryptoSigner(key)
        if signer.public_key.keyid not in self._root.signed.roles[role].keyids:
            raise ValueError(f"{self._key_path(role)} is not a {role} key of root.json")
        return signer

    def _sign(self, role: str, md: Metadata[Any]) -> bytes:
        md.sign(self._signers[role])
        return md.to_bytes(_SERIALIZER)

    def _store_root(self, root: Metadata[Root]) -> None:
        data = self._sign("root", root)
        version = root.signed.version
        _write_atomic(self._meta_dir / f"{version}.root.json", data)
        _write_atomic(self._meta_dir / "root.json", data)
        self._root = root
        self._roots[version] = data
        self._files["root.json"] = data

    def _publish(self, first: _ChainRole, *, bump: bool = True) -> None:
        """Re-sign ``first`` and every role after it (targets, snapshot, timestamp).

        Each role gets a new version (unless ``bump`` is false, at creation) and a new
        expiry; the snapshot and timestamp point at the exact lengths of the files they
        cover. Files are written in chain order, and the cache is swapped only once all
        are written, so a reader never sees a mixed set.
        """
        new: dict[str, bytes] = {}
        if first == "targets":
            _renew(self._targets.signed, self._expiry.targets, bump)
            new["targets.json"] = self._sign("targets", self._targets)
        if first in ("targets", "snapshot"):
            length = len(new.get("targets.json", self._files.get("targets.json", b"")))
            self._snapshot.signed.meta["targets.json"] = MetaFile(
                self._targets.signed.version, length=length
            )
            _renew(self._snapshot.signed, self._expiry.snapshot, bump)
            new["snapshot.json"] = self._sign("snapshot", self._snapshot)
        length = len(new.get("snapshot.json", self._files.get("snapshot.json", b"")))
        self._timestamp.signed.snapshot_meta = MetaFile(
            self._snapshot.signed.version, length=length
        )
        _renew(self._timestamp.signed, self._expiry.timestamp, bump)
        new["timestamp.json"] = self._sign("timestamp", self._timestamp)
        for filename, data in new.items():
            _write_atomic(self._meta_dir / filename, data)
        self._files.update(new)


def _now() -> datetime:
    return datetime.now(UTC)


def _expires_in(seconds: float) -> datetime:
    """Now + ``seconds``, rounded up to the whole second that TUF's format keeps."""
    return (_now() + timedelta(seconds=seconds)).replace(microsecond=0) + timedelta(seconds=1)


def _renew(signed: Targets | Snapshot | Timestamp, lifetime: float, bump: bool) -> None:
    if bump:
        signed.version += 1
    signed.expires = _expires_in(lifetime)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write ``path`` so that a crash leaves either the old or the new file, whole.

    ``durable`` also fsyncs the file and its directory (the hub's signed metadata and keys).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode does not apply to a left-over tmp file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    if not durable:
        return
    # the rename itself must survive a power cut, or the hub could re-issue a version
    # number that devices have already seen with other content
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------- device side


class _StagingFetcher(FetcherInterface):
    """Serves the files that arrived over MQTT, as the Updater's "remote repository".

    A missing file is a 404: that is how the Updater learns there is no newer root.
    """

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self._files = files
        self.root_asked = 0  # highest N of an N.root.json the Updater asked for

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(_STAGING_URL)
        head, _, rest = name.partition(".")
        if rest == "root.json" and head.isdigit():
            self.root_asked = max(self.root_asked, int(head))
        data = self._files.get(name)
        if data is None:
            raise tuf_errors.DownloadHTTPError(f"{name} is not in the staged metadata", 404)
        return iter((data,))


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
            if root_path.exists():
                self._root_version = _root_version(root_path.read_bytes())
                return
            if pinned_root is None:
                raise TrustError(Reason.METADATA_INVALID, f"no trusted root in {metadata_dir}")
            self._root_version = _root_version(pinned_root)
            # not fsynced, like tuf's own writes here: a lost pin is re-pinned at next start
            _write_atomic(root_path, pinned_root, durable=False)
        except OSError as e:
            raise TrustError(Reason.STORAGE_ERROR, f"{metadata_dir}: {e}") from e

    @property
    def root_version(self) -> int:
        """Version of the trusted root (what a ``fetch_meta`` request carries)."""
        return self._root_version

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
        fetcher = _StagingFetcher(files)
        try:
            # bootstrap=None: the trust anchor is root.json in metadata_dir (written at
            # enrolment), not bytes passed in; tuf 7 wants that choice made explicitly.
            updater = Updater(str(self._dir), _STAGING_URL, fetcher=fetcher, bootstrap=None)
            updater.refresh()
            info = updater.get_targetinfo(target_name)
        except tuf_errors.UnsignedMetadataError as e:
            raise TrustError(Reason.BAD_SIGNATURE, str(e)) from e
        except tuf_errors.ExpiredMetadataError as e:
            raise TrustError(Reason.EXPIRED_METADATA, str(e)) from e
        except tuf_errors.BadVersionNumberError as e:
            raise TrustError(Reason.METADATA_ROLLBACK, str(e) or type(e).__name__) from e
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, ValueError) as e:
            # includes LengthOrHashMismatchError and DeserializationError
            raise TrustError(Reason.METADATA_INVALID, f"{type(e).__name__}: {e}") from e
        except OSError as e:
            raise TrustError(Reason.STORAGE_ERROR, f"{self._dir}: {e}") from e
        finally:
            # TUF asks for root N+1 only once it trusts root N (spec 5.3.4-5.3.9).
            if fetcher.root_asked:
                self._root_version = fetcher.root_asked - 1
        if info is None:
            raise TrustError(Reason.TARGET_NOT_FOUND, f"{target_name!r} is not a signed target")
        return _verified_target(info)

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


def _parse(cls: type[_SignedT], data: bytes) -> Metadata[_SignedT]:
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
        return _parse(Root, data).signed.version
    except (tuf_errors.RepositoryError, ValueError) as e:
        raise TrustError(Reason.METADATA_INVALID, f"trusted root: {e}") from e


def _verified_target(info: TargetFile) -> VerifiedTarget:
    sha256 = info.hashes.get("sha256")
    custom = info.custom
    try:
        if sha256 is None:
            raise ValueError("no sha256 hash")
        if not isinstance(custom, dict) or not isinstance(custom.get(_CUSTOM_JSON), str):
            raise ValueError(f"custom is not {{{_CUSTOM_JSON!r}: <text>}}")
        fields = json.loads(custom[_CUSTOM_JSON])
        if not isinstance(fields, dict):
            raise ValueError("custom JSON is not an object")
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise TrustError(Reason.METADATA_INVALID, f"target {info.path}: {e}") from e
    return VerifiedTarget(name=info.path, length=info.length, sha256=sha256, custom=fields)
