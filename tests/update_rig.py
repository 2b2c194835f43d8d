"""A hub and one device wired back to back, with an attacker on the wire between them.

The hub side is the real thing minus MQTT: a TUF repository (hub/trust/repository.py), the
model registry on a SQLite file, and the same fetch answering the hub's MQTT client uses
(``hub.transport.fetch.answer_fetch``). The device is the real ``agent.device.Device`` with its
files on disk, its TUF verifier and onnxruntime. Messages go through in-memory queues so
each row of the attack table runs in milliseconds; the attacker sees every blob the hub
sends and may change, drop or replace it. The device's clock is a fake one the test
moves (the core's timeouts); TUF's expiry reads the real clock (tests freeze it).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from securesystemslib.signer import CryptoSigner

from agent.core import CoreConfig
from agent.device import Device
from agent.runtime import OnnxBackend, SessionCache
from agent.store import DeviceStore
from agent.update_log import UpdateLog
from hub import pipeline_config
from hub.ml.pipeline import BuiltModel
from hub.ml.registry import Registry
from hub.store.artifacts import ArtifactStore
from hub.store.tables import make_engine, sqlite_url
from hub.transport.fetch import answer_fetch
from hub.trust.repository import Expiry, TrustRepository
from shared import protocol
from shared.director import sign_command
from shared.sensors import generate

DEVICE = "dev-1"
CHUNK = 1024  # bytes: several chunks per model, so chunk attacks have room

Tamper = Callable[[bytes], bytes | None]  # a blob from the hub -> what reaches the device


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class UpdateRig:
    """One hub, one device, an attacker on the wire."""

    def __init__(
        self,
        tmp: Path,
        built: BuiltModel,
        *,
        expiry: Expiry | None = None,
        thresholds: dict[str, int] | None = None,
        key_counts: dict[str, int] | None = None,
        device_class: str = "gateway",
        fetch_timeout_s: float = 5.0,
        log_updates: bool = False,
    ) -> None:
        self.tmp = tmp
        self.built = built
        self.trust = TrustRepository.open_or_init(
            tmp / "hub" / "trust",
            expiry=expiry or Expiry(),
            thresholds=thresholds,
            key_counts=key_counts,
        )
        engine = make_engine(sqlite_url(tmp / "hub" / "hub.db"))
        self.registry = Registry(
            engine, ArtifactStore(tmp / "hub" / "artifacts"), self.trust, CHUNK
        )
        self.pipeline = pipeline_config(probation_s=0.0, probation_min_inferences=0)
        self.clock = Clock()
        self.sessions = SessionCache(OnnxBackend())
        self.wire: deque[tuple[str, bytes]] = deque()
        self.events: list[dict[str, Any]] = []
        self.tamper: Tamper | None = None  # the attacker, on hub -> device blobs
        self.hub_silent = False  # drop-request: the hub never answers
        self.fetches = 0
        self.serving_before: int | None = None  # what the device served before the last send
        self.device = Device(
            CoreConfig(DEVICE, device_class, fetch_timeout_s=fetch_timeout_s),
            DeviceStore(tmp / "device"),
            publish=lambda topic, payload, _q, _r: self.wire.append((topic, payload)),
            sessions=self.sessions,
            pinned_root=self.trust.pinned_root(),
            check_memory=False,
            clock=self.clock,
            update_log=UpdateLog(DEVICE) if log_updates else None,  # as the daemon's device
        )
        self.device.connected()
        self.pump()

    # ------------------------------------------------------------- hub side

    def publish(self, device_classes: Sequence[str] = ()) -> int:
        """Sign and register the next version of the model; its version number."""
        row = self.registry.publish(
            self.built, config=self.pipeline, device_classes=tuple(device_classes)
        )
        return row.version

    def command(
        self,
        msg_type: str,
        version: int,
        *,
        signers: Sequence[CryptoSigner] | None = None,
        device_id: str = DEVICE,
        ttl_s: float = 3600.0,
        now: float | None = None,
        deployment: str | None = None,
        fanout: str | None = None,
    ) -> bytes:
        body: dict[str, Any] = {
            "deployment": deployment or f"{msg_type}-{version}",
            "model": self.built.name,
            "version": version,
        }
        if msg_type == "deploy":
            body["target"] = f"{self.built.name}/{version}/model.onnx"
        if fanout is not None:
            body["fanout"] = fanout  # the topic the hub fans the chunks out on
        return sign_command(
            self.trust.director_signers() if signers is None else signers,
            msg_type,
            body,
            device_id=device_id,
            now=self.clock.now if now is None else now,
            ttl_s=ttl_s,
            root_version=self.trust.root_version,
        )

    def send(self, payload: bytes) -> list[dict[str, Any]]:
        """Deliver a command to the device, run the exchange to the end; the new events."""
        before = len(self.events)
        self.serving_before = self.serving()
        self.device.message("cmd", payload)
        self.pump()
        return self.events[before:]

    def deploy(self, version: int, **kwargs: Any) -> list[dict[str, Any]]:
        return self.send(self.command("deploy", version, **kwargs))

    def advance(self, seconds: float) -> list[dict[str, Any]]:
        """Let time pass on the device (its retries and timeouts); the new events."""
        before = len(self.events)
        self.clock.now += seconds
        self.device.tick()
        self.pump()
        return self.events[before:]

    def pump(self) -> None:
        while self.wire:
            topic, payload = self.wire.popleft()
            kind = topic.rsplit("/", 1)[1]
            if kind == "events":
                self.events.append(json.loads(payload)["body"])
            if kind != "fetch":
                continue
            self.fetches += 1
            if self.hub_silent:
                continue
            message = protocol.decode(payload, expect=protocol.TOPIC_TYPES["fetch"])
            for blob, _count in answer_fetch(self.registry, self.trust, message):
                tampered = self.tamper(blob) if self.tamper else blob
                if tampered is not None:
                    self.device.message("blob", tampered)

    # ------------------------------------------------------------- device side

    def serving(self) -> int | None:
        """The version the device serves; it must answer a real prediction too."""
        active = self.device.predictor.active
        if active is None:
            return None
        x, _ = generate(4, seed=3)
        out = self.device.predictor.predict(x)
        assert np.isfinite(out["probabilities"]).all()
        return active[1]

    def installed_versions(self) -> list[str]:
        folder = self.tmp / "device" / "models" / self.built.name
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def install(self, version: int) -> None:
        """The normal path, for a starting point: deploy and check it went healthy."""
        stages = [e["stage"] for e in self.deploy(version)]
        assert stages[-1] == "healthy", self.events[-3:]
        assert self.serving() == version
