"""What an attacker brings to the update rig (tests/update_rig.py) beyond editing bytes:
metadata forged in full with a key of its own, and targets the hub itself signed for
another runtime or another device class.

- ``fast_forward_chain``: the attacker writes a timestamp, snapshot and targets file, each
  a valid python-tuf document with a version far ahead (``FAR_AHEAD``), each pointing at
  the next with its true length, signed by a real Ed25519 key of its own. Only a role's
  own keys make such a file count.
- ``litert_build``: a model version built by the hub's pipeline for a LiteRT class as
  well as an ONNX one (``train(runtimes=("tflite",))``: an int8 ONNX file and its .tflite
  sibling, each judged and gated), and ``publish_for`` signs it the way the hub does
  (``publish_version``, with the shipped classes' health budgets), so the targets an
  attack deploys carry genuine signatures and genuine manifests.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata
from update_rig import UpdateRig

from hub import pipeline_config
from hub.fleet.classes import load_classes
from hub.ml.manifest import BuiltModel
from hub.ml.pipeline import train
from hub.ml.publishing import Published, extra_runtimes, publish_version
from shared.director import sign_command

FAR_AHEAD = 2**31  # the version the attacker claims: no real hub reaches it
ONNX_CLASS = "generic-linux"  # shipped classes (firmware-images/): onnxruntime
LITERT_CLASS = "pi-litert"  # ... and LiteRT (.tflite)


# --------------------------------------------------------------------------- fast-forward


def fast_forward_chain(files: dict[str, bytes], signer: CryptoSigner) -> None:
    """Replace the bundle's timestamp, snapshot and targets with the attacker's: each
    ``FAR_AHEAD``, each naming the next with its real length and hash, signed by
    ``signer``. Delegated targets files in the bundle are forged the same way."""
    snapshot: Any = Metadata.from_bytes(files["snapshot.json"]).signed
    listed = snapshot.meta
    for name in [n for n in files if n in listed]:  # targets.json and any delegated role
        files[name] = _forge(files[name], signer, _ahead)

    def point_snapshot(signed: Any) -> None:
        _ahead(signed)
        for name, meta in signed.meta.items():
            if name in files:
                _point(meta, files[name])

    files["snapshot.json"] = _forge(files["snapshot.json"], signer, point_snapshot)

    def point_timestamp(signed: Any) -> None:
        _ahead(signed)
        _point(signed.snapshot_meta, files["snapshot.json"])

    files["timestamp.json"] = _forge(files["timestamp.json"], signer, point_timestamp)


def trusted_versions(device_dir: Path) -> dict[str, int]:
    """Role -> version of the metadata a device trusts (its rollback memory on disk)."""
    trust = device_dir / "trust"
    return {
        p.stem: Metadata.from_bytes(p.read_bytes()).signed.version
        for p in sorted(trust.glob("*.json"))
        if p.stem in ("timestamp", "snapshot", "targets")
    }


def _forge(data: bytes, signer: CryptoSigner, change: Any) -> bytes:
    md = Metadata.from_bytes(data)
    change(md.signed)
    md.signatures.clear()
    md.sign(signer)
    return md.to_bytes()


def _ahead(signed: Any) -> None:
    signed.version = FAR_AHEAD


def _point(meta: Any, data: bytes) -> None:
    meta.version = FAR_AHEAD
    meta.length = len(data)
    if meta.hashes:
        meta.hashes = {"sha256": hashlib.sha256(data).hexdigest()}


# --------------------------------------------------------------------------- other targets


@cache
def litert_build() -> BuiltModel:
    """The rig's model (tests/conftest.py ``built``) built again for both runtimes: its
    int8 ONNX file and a .tflite sibling (TensorFlow's converter, once per session)."""
    classes = load_classes()
    runtimes = extra_runtimes(classes.runtimes, (ONNX_CLASS, LITERT_CLASS))
    assert runtimes == ("tflite",), runtimes
    return train(pipeline_config(n_train=2000, n_holdout=500, hidden=(16,)), runtimes=runtimes)


def publish_for(rig: UpdateRig, device_classes: tuple[str, ...]) -> Published:
    """Sign the next version of the rig's model for ``device_classes`` as the hub does:
    every artefact (ONNX, and the .tflite for LiteRT classes) with its class budgets."""
    built = litert_build()
    assert built.name == rig.built.name
    return publish_version(
        rig.registry,
        built,
        config=rig.pipeline,
        source="trained",
        device_classes=device_classes,
        health_for=load_classes().health,
    )


def deploy_target(rig: UpdateRig, published: Published, runtime: str) -> bytes:
    """A deploy of ``published`` signed by the hub's director key, naming the version's
    artefact for ``runtime``."""
    row = published.row
    body = {
        "deployment": f"deploy-{row.version}-{runtime}",
        "model": row.name,
        "version": row.version,
        "target": published.artefacts[runtime]["target"],
    }
    return sign_command(
        rig.trust.director_signers(),
        "deploy",
        body,
        device_id=rig.device.config.device_id,
        now=rig.clock.now,
        ttl_s=3600.0,
        root_version=rig.trust.root_version,
    )
