"""The hub as one object: storage, trust, registry, broker link, ingest, deployments.

``Hub(HubConfig(...)).start()`` gives a running hub; hub/api.py puts HTTP in front of
it and ``edgefleet hub serve`` runs both. On one machine with no set-up it uses a SQLite
file, a local artifact directory and a broker chosen as DESIGN §7 says.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hub.artifacts import ArtifactStore
from hub.broker import BrokerAddress, EmbeddedBroker, Mosquitto, start_local_broker
from hub.db import make_engine, sqlite_url
from hub.deployments import Deployments
from hub.ingest import Ingest
from hub.jobs import Jobs, Progress
from hub.mqtt import HubMqtt
from hub.pipeline import PipelineConfig, import_onnx, train
from hub.registry import Registry
from shared.chunks import DEFAULT_CHUNK_SIZE
from shared.trust import TrustRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubConfig:
    data_dir: Path
    db_url: str | None = None  # default: SQLite file in data_dir
    broker_url: str | None = None  # default: private Mosquitto, else embedded broker
    chunk_size: int = DEFAULT_CHUNK_SIZE  # bytes per chunk sent to devices
    enrol_token: str | None = None  # default: generated once, kept in data_dir
    client_id: str = "edgefleet-hub"


class Hub:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.local_broker: Mosquitto | EmbeddedBroker | None = None
        self._started = False

    # ------------------------------------------------------------- lifecycle

    def start(self) -> Hub:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(cfg.db_url or sqlite_url(cfg.data_dir / "hub.db"))
        self.trust = TrustRepository.open_or_init(cfg.data_dir / "trust")
        self.store = ArtifactStore(cfg.data_dir / "artifacts")
        self.registry = Registry(self.engine, self.store, self.trust, cfg.chunk_size)
        self.ingest = Ingest(self.engine)
        self.ingest.start()
        if cfg.broker_url:
            self.broker = BrokerAddress.parse(cfg.broker_url)
        else:
            self.local_broker = start_local_broker(cfg.data_dir / "broker")
            self.broker = self.local_broker.address
        self.mqtt = HubMqtt(
            self.broker, self.registry, self.trust, self.ingest, client_id=cfg.client_id
        )
        self.mqtt.start()
        self.deployments = Deployments(self.engine, self.registry, self.mqtt)
        self.jobs = Jobs(self.engine)
        self.enrol_token = cfg.enrol_token or self._stored_token()
        self._started = True
        log.info("hub started: data %s, broker %s", cfg.data_dir, self.broker.url)
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self.jobs.shutdown()
        self.mqtt.stop()
        self.ingest.stop()
        if self.local_broker is not None:
            self.local_broker.stop()
        self.engine.dispose()
        self._started = False

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stored_token(self) -> str:
        path = self.config.data_dir / "enrol-token"
        if path.exists():
            return path.read_text().strip()
        token = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token

    # ------------------------------------------------------------- operations

    def check_enrol_token(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.enrol_token.encode())

    def build_and_publish(
        self,
        config: PipelineConfig,
        progress: Progress | None = None,
        *,
        device_classes: tuple[str, ...] = (),
        onnx_bytes: bytes | None = None,
    ) -> dict[str, Any]:
        """Train (or import) → quantise → evaluate → gate → sign → register.

        Raises:
            PipelineError / GateError: the model was not good enough or not usable.
        """
        if onnx_bytes is None:
            built = train(config, progress)
            source = "trained"
        else:
            built = import_onnx(onnx_bytes, config, progress)
            source = "uploaded"
        if progress:
            progress("sign", 0.95)
        row = self.registry.publish(
            built, config=config, source=source, device_classes=device_classes
        )
        return {
            "name": row.name,
            "version": row.version,
            "sha256": row.sha256,
            "format": row.format,
            "size_bytes": row.size_bytes,
            "size_fp32": row.size_fp32,
            "accuracy_fp32": row.accuracy_fp32,
            "accuracy_int8": row.accuracy_int8,
            "target": row.target,
        }


def pipeline_config(**overrides: Any) -> PipelineConfig:
    """The default pipeline config with the given fields replaced (unknown ones refused)."""
    base = PipelineConfig()
    unknown = set(overrides) - set(base.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown pipeline settings: {', '.join(sorted(unknown))}")
    return replace(base, **overrides)
