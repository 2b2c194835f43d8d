"""A content-addressed artifact store: files named by their sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class ArtifactStore:
    """Files under ``root/sha256/ab/abcdef…``; writing the same bytes twice is a no-op."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        dest = self.path(digest)
        if dest.exists():
            return digest
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # files 0600 (mkstemp)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def put_file(self, src: Path, sha256: str) -> str:
        """Move the file ``src`` (whose sha256 the caller computed while writing it) in.

        ``src`` must be on the same file system (a temporary file under the data dir);
        it is gone afterwards either way.
        """
        dest = self.path(sha256)
        if dest.exists():
            src.unlink(missing_ok=True)
            return sha256
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # others kept out
        os.replace(src, dest)
        return sha256

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()
