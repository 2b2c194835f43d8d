"""TUF metadata bytes a device downloads for one update, by fleet size (ADRs 0037, 0041).

For each scale (models x versions) a real repository (hub/trust/repository.py, real
python-tuf, real Ed25519 signing) gets every version of every model, each with a manifest
shaped like the pipeline's (16 features, 4 classes, 8 golden rows, a 10-bin drift
baseline: ~10 KB of JSON). A device (the real ``DeviceVerifier``) then updates one model:

- **first**: a device that trusts only the pinned root fetches the newest version;
- **second**: the same device, after the hub published one more version of its model
  (its ``fetch_meta`` names the top-level targets version it has: unchanged, left out).

Each figure is the size of the ``fetch_meta`` answer on the wire (the meta blob: its
header and files: timestamp, snapshot, top-level targets, the model's shard, its role,
its manifest), and the device verifies what it got. Beside it, the old layout's figure
(every target and its manifest inline in top-level ``targets.json``): computed by signing
such a file where it fits under the 1 MiB answer limit, else projected from its entry
size. Goal: flat, under 64 KiB at every scale.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any, Final

import numpy as np
from tuf.api.metadata import Metadata, TargetFile, Targets

from hub.ml.baseline import baseline_stats
from hub.trust.delegation import manifest_text
from hub.trust.repository import TrustRepository
from shared import protocol
from shared.chunks import chunk_hashes
from shared.manifest import HealthCheck, Manifest, TensorSpec
from shared.trust import DeviceVerifier

GOAL_BYTES: Final = 64 * 2**10
CAP_BYTES: Final = protocol.MAX_BLOB_BYTES  # a fetch answer's limit
MODEL_BYTES: Final = 8 * 2**10  # a small int8 MLP, as the pipeline builds
CHUNK_BYTES: Final = 1024  # bytes per chunk (the manifest lists one sha256 per chunk)
DEFAULT_SCALES: Final = "1x1,50x20,200x50"


@cache
def baseline() -> dict[str, Any]:
    """One drift baseline of the pipeline's shape (the same for every version: its size,
    not its values, is what the figures depend on; computing one per version would make
    the 10,000-version scale take minutes)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    p = rng.dirichlet(np.ones(4), size=400).astype(np.float32)
    return baseline_stats(x, p, 10)


def make_manifest(model: str, version: int, data: bytes, rng: np.random.Generator) -> Manifest:
    """A manifest of the pipeline's shape and size for ``data``."""
    golden = tuple(tuple(float(v) for v in row) for row in rng.normal(size=(8, 16)))
    outputs = tuple(tuple(float(v) for v in row) for row in rng.dirichlet(np.ones(4), size=8))
    health = HealthCheck(golden, outputs, "probabilities", 0.01, 5000, 64, 60, 10, 0.05)
    return Manifest(
        model=model,
        channel="stable",
        version=version,
        format="onnx",
        runtime="onnxruntime",
        device_classes=(),
        inputs=(TensorSpec("input", "float32", (None, 16)),),
        outputs=(TensorSpec("probabilities", "float32", (None, 4)),),
        classes=("a", "b", "c", "d"),
        chunk_size=CHUNK_BYTES,
        chunks=tuple(chunk_hashes(data, CHUNK_BYTES)),
        health=health,
        baseline=baseline(),
        metrics={"accuracy_int8": 0.9, "size_int8": float(len(data))},
    )


def wire_bytes(files: list[tuple[str, bytes]]) -> int:
    return len(protocol.encode_meta_blob("dev-1:1", files))


def old_layout_bytes(entries: list[tuple[str, bytes, bytes]], top: dict[str, bytes]) -> int:
    """The old layout's answer: every target with its manifest inline in targets.json,
    signed for real (the snapshot and timestamp are as small as today's)."""
    targets = Targets()
    for name, data, text in entries:
        t = TargetFile.from_data(name, data, ["sha256"])
        t.unrecognized_fields["custom"] = {"json": text.decode()}
        targets.targets[name] = t
    from securesystemslib.signer import CryptoSigner

    md = Metadata(targets)
    md.sign(CryptoSigner.generate_ed25519())
    return len(md.to_bytes()) + len(top["timestamp.json"]) + len(top["snapshot.json"])


def measure(models: int, versions: int, work: Path, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    repo = TrustRepository.open_or_init(work / "hub")
    entries: list[tuple[str, bytes, bytes]] = []
    items = []
    for m in range(models):
        for v in range(1, versions + 1):
            name, data = f"model{m:04d}/{v}/model.onnx", rng.bytes(MODEL_BYTES)
            custom = make_manifest(f"model{m:04d}", v, data, rng).to_custom()
            items.append((name, data, custom))
            entries.append((name, data, manifest_text(custom)))
    t0 = time.perf_counter()
    repo.add_targets(items)
    build_s = time.perf_counter() - t0
    mine = f"model{models - 1:04d}"
    device = DeviceVerifier(work / "device", repo.pinned_root())
    first_files = repo.metadata_for(device.root_version, f"{mine}/{versions}/model.onnx")
    device.verify_metadata(dict(first_files), f"{mine}/{versions}/model.onnx")
    newest = f"{mine}/{versions + 1}/model.onnx"
    data = rng.bytes(MODEL_BYTES)
    repo.add_target(newest, data, make_manifest(mine, versions + 1, data, rng).to_custom())
    trusted = device.trusted_targets()
    known = trusted[0] if trusted is not None else None
    second_files = repo.metadata_for(device.root_version, newest, known)
    device.verify_metadata(dict(second_files), newest)
    per_entry = len(entries[0][2]) + 200  # manifest text + name, hashes, length, quoting
    projected = per_entry * len(entries)
    old = old_layout_bytes(entries, dict(first_files)) if projected <= 2 * CAP_BYTES else None
    first, second = wire_bytes(first_files), wire_bytes(second_files)
    return {
        "models": models,
        "versions": versions,
        "targets": len(entries),
        "first_update_bytes": first,
        "second_update_bytes": second,
        "files": {n: len(b) for n, b in first_files},
        "second_files": {n: len(b) for n, b in second_files},
        "old_layout_bytes": old if old is not None else projected,
        "old_layout_projected": old is None,
        "old_layout_over_cap": (old or projected) > CAP_BYTES,
        "ratio_to_old": round((old or projected) / first, 1),
        "under_goal": max(first, second) <= GOAL_BYTES,
        "manifest_bytes": len(entries[0][2]),
        "sign_s": round(build_s, 2),
    }


def run(scales: list[tuple[int, int]]) -> dict[str, Any]:
    # /dev/shm where there is one: the figures are bytes, not disk time
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    rows = []
    for models, versions in scales:
        with tempfile.TemporaryDirectory(prefix="edgefleet-meta-", dir=base) as tmp:
            rows.append(measure(models, versions, Path(tmp)))
    firsts = [r["first_update_bytes"] for r in rows]
    return {
        "goal_bytes": GOAL_BYTES,
        "cap_bytes": CAP_BYTES,
        "scales": rows,
        "flatness": round(max(firsts) / min(firsts), 2),  # largest over smallest first update
    }


def parse_scales(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        m, _, v = part.partition("x")
        if not (m.isdigit() and v.isdigit() and int(m) > 0 and int(v) > 0):
            raise argparse.ArgumentTypeError(f"scale {part!r}: MODELSxVERSIONS, e.g. 50x20")
        out.append((int(m), int(v)))
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench metadata", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--scales", type=parse_scales, default=DEFAULT_SCALES, help="MxV,...")
    args = p.parse_args(argv)
    scales = args.scales if isinstance(args.scales, list) else parse_scales(args.scales)
    result = run(scales)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"metadata a device downloads for one update (goal: flat, <= {GOAL_BYTES} bytes)")
    head = ("models x versions", "first", "second", "old layout", "old/new", "sign s")
    print("{:<18} {:>8} {:>8} {:>14} {:>8} {:>7}".format(*head))
    for r in rows_of(result):
        old = f"{'~' if r['old_layout_projected'] else ''}{r['old_layout_bytes']}"
        old += " !" if r["old_layout_over_cap"] else ""
        scale = f"{r['models']} x {r['versions']}"
        print(
            f"{scale:<18} {r['first_update_bytes']:>8} {r['second_update_bytes']:>8}"
            f" {old:>14} {r['ratio_to_old']:>8} {r['sign_s']:>7}"
        )
    print(f"flatness (largest / smallest first update): {result['flatness']}")
    print("~ projected from the entry size; ! over the 1 MiB answer limit: the hub cannot send it")
    return 0


def rows_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return list(result["scales"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
