"""Names of the per-model delegated roles and manifest targets (ADR 0037).

The hub's top-level ``targets`` lists no target itself: it delegates each model's paths to
a role of its own, and each artefact's manifest is a small target of its own beside the
model file. The hub (hub/trust/delegation.py) and the device (shared/trust.py) agree on
these names:

- a target ``<model>/<version>/model.onnx`` is in role ``model-<model>``, which is
  delegated the path pattern ``<model>/*/*`` (TUF matches a pattern segment by segment;
  a one-segment name is delegated exactly, with its manifest's);
- the role's file is ``model-<model>.json`` (quoted as tuf.ngclient quotes role names);
- the model target's ``custom`` is ``{"manifest": "<target>.manifest"}``; that target's
  bytes are the manifest's JSON text, signed by sha256 and length in the same role, and
  they travel in the ``fetch_meta`` answer under ``targets/<target>.manifest``;
- top-level ``targets`` does not delegate the model roles itself (ADR 0041): it delegates
  each model's pattern to one of ``SHARD_COUNT`` shard roles, ``shard-<nn>`` (the first
  byte of the sha256 of the model name, modulo the count), and the shard delegates the
  model's role. A device walks targets, its shard, its model's role.
"""

from __future__ import annotations

import hashlib
from typing import Final
from urllib.parse import quote

__all__ = [
    "MANIFEST_FIELD",
    "MANIFEST_SUFFIX",
    "ROLE_PREFIX",
    "SHARD_COUNT",
    "SHARD_PREFIX",
    "TARGET_FILE_PREFIX",
    "bundle_name",
    "manifest_target",
    "path_patterns",
    "role_file",
    "role_name",
    "shard_name",
]

ROLE_PREFIX: Final = "model-"  # never a top-level role name, whatever the model is called
SHARD_PREFIX: Final = "shard-"  # a shard role: never a model role's name (ROLE_PREFIX)
SHARD_COUNT: Final = 16  # fixed: changing it re-shards every model (ADR 0041's figures)
MANIFEST_SUFFIX: Final = ".manifest"
MANIFEST_FIELD: Final = "manifest"  # key of the manifest target in a model target's custom
TARGET_FILE_PREFIX: Final = "targets/"  # a target file's name in a metadata bundle
_GLOB: Final = str.maketrans({c: f"[{c}]" for c in "*?["})


def role_name(target: str) -> str:
    """The delegated role that lists ``target``: one per first path segment (the model)."""
    return ROLE_PREFIX + target.split("/", 1)[0]


def shard_name(target: str) -> str:
    """The shard role that delegates ``target``'s model role: a hash bin on the model name,
    so every version of a model (and its manifest) is under one shard."""
    model = target.split("/", 1)[0]
    return f"{SHARD_PREFIX}{hashlib.sha256(model.encode()).digest()[0] % SHARD_COUNT:02d}"


def role_file(role: str) -> str:
    """The role's metadata file name, as tuf.ngclient asks for it."""
    return f"{quote(role, '')}.json"


def path_patterns(target: str) -> list[str]:
    """The delegated path patterns that cover ``target`` and its manifest target (and
    their siblings of one depth: ``m/*/*``); a name of one segment is covered exactly."""
    first, *rest = target.split("/")
    if not rest:
        return [first.translate(_GLOB), manifest_target(first).translate(_GLOB)]
    return ["/".join([first.translate(_GLOB), *("*" for _ in rest)])]


def manifest_target(target: str) -> str:
    """The name of the target that holds ``target``'s manifest."""
    return target + MANIFEST_SUFFIX


def bundle_name(target: str) -> str:
    """Name of a target file's bytes in a metadata bundle (never a metadata file's)."""
    return TARGET_FILE_PREFIX + target
