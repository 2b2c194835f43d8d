"""What built a model: the package version and the source revision (for lineage)."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["package_version", "source_revision"]

REVISION_ENV = "EDGEFLEET_REVISION"  # set by a packaged install that has no .git


@functools.cache
def package_version() -> str | None:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def source_revision() -> str | None:
    """The git commit of the source tree (``+dirty`` when it has local changes), or the
    ``EDGEFLEET_REVISION`` environment variable, or None."""
    if os.environ.get(REVISION_ENV):
        return os.environ[REVISION_ENV]
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None
