"""The device's files: state, trusted metadata, staging area, installed models.

Layout under the state directory::

    state.json                       the core's state (atomic replace; fsync when durable)
    trust/                           TUF metadata this device trusts (its rollback memory)
    staging/<sha256>.part            a download being assembled, chunk by chunk
    uploads/<sha256 of id>.bin       a capture's upload, kept until the hub has it all
    models/<model>/<version>/model.<format>   verified files; the core's state says
                                              which version is active

Nothing unverified is ever written under ``models/``: a file gets there only by a
rename after its whole-file length and sha256 matched the signed metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared.atomic import fsync_dir, write_atomic
from shared.chunks import chunk_span
from shared.trust import VerifiedTarget


class DeviceStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.trust_dir = root / "trust"
        self.staging_dir = root / "staging"
        self.models_dir = root / "models"
        self.uploads_dir = root / "uploads"
        for d in (self.trust_dir, self.staging_dir, self.models_dir, self.uploads_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------- state

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def load_state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        return data

    def save_state(self, state: dict[str, Any], durable: bool) -> None:
        self.write_state(json.dumps(state, separators=(",", ":")).encode(), durable)

    def write_state(self, data: bytes, durable: bool) -> None:
        """Write the state, already JSON-encoded (private: it names what the device runs)."""
        write_atomic(self.state_path, data, mode=0o600, durable=durable)

    # ------------------------------------------------------------- staging

    def staging_path(self, target: VerifiedTarget) -> Path:
        return self.staging_dir / f"{target.sha256}.part"

    def write_chunk(self, target: VerifiedTarget, offset: int, data: bytes) -> None:
        path = self.staging_path(target)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def valid_chunks(
        self,
        target: VerifiedTarget,
        chunk_size: int,
        hashes: tuple[str, ...],
        claimed: Iterable[int],
    ) -> frozenset[int]:
        """The claimed chunks whose bytes on disk still match their signed hashes."""
        path = self.staging_path(target)
        if not path.exists():
            return frozenset()
        valid = set()
        with path.open("rb") as f:
            for i in claimed:
                if not 0 <= i < len(hashes):
                    continue
                off, size = chunk_span(i, target.length, chunk_size)
                f.seek(off)
                if hashlib.sha256(f.read(size)).hexdigest() == hashes[i]:
                    valid.add(i)
        return frozenset(valid)

    def discard_staging(self, target: VerifiedTarget | None) -> None:
        if target is not None:
            self.staging_path(target).unlink(missing_ok=True)

    # ------------------------------------------------------------- capture uploads

    def upload_path(self, capture: str) -> Path:
        """Where a capture's upload is kept (the id is the hub's: hashed, never a path)."""
        return self.uploads_dir / f"{hashlib.sha256(capture.encode()).hexdigest()[:32]}.bin"

    def keep_upload(self, capture: str, data: bytes) -> None:
        write_atomic(self.upload_path(capture), data, mode=0o600)

    def read_upload(self, capture: str, length: int) -> bytes:
        """The kept upload of ``capture``.

        Raises:
            OSError: it is gone, or not ``length`` bytes any more.
        """
        data = self.upload_path(capture).read_bytes()
        if len(data) != length:
            raise OSError(f"the kept upload has {len(data)} bytes, not {length}")
        return data

    def drop_upload(self, capture: str) -> None:
        self.upload_path(capture).unlink(missing_ok=True)

    # ------------------------------------------------------------- models

    def model_path(self, model: str, version: int, fmt: str = "onnx") -> Path:
        return self.models_dir / model / str(version) / f"model.{fmt}"

    def install(self, target: VerifiedTarget, model: str, version: int, fmt: str) -> Path:
        """Move a verified staging file into ``models/`` (rename + fsync)."""
        src = self.staging_path(target)
        dest = self.model_path(model, version, fmt)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with src.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(src, dest)
        fsync_dir(dest.parent)
        return dest

    def remove_version(self, model: str, version: int) -> None:
        shutil.rmtree(self.models_dir / model / str(version), ignore_errors=True)

    def prune(self, model: str, keep: Iterable[int]) -> None:
        keep_names = {str(v) for v in keep}
        base = self.models_dir / model
        if not base.is_dir():
            return
        for child in base.iterdir():
            if child.name not in keep_names:
                shutil.rmtree(child, ignore_errors=True)
