"""The hub as one object: storage, trust, registry, broker link, ingest, deployments.

``Hub(HubConfig(...)).start()`` gives a running hub; hub/api/main.py puts HTTP in front of
it and ``edgefleet hub serve`` runs both. On one machine with no set-up it uses a SQLite
file, a local artifact directory and a broker chosen as DESIGN §7 says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from hub.access.audit import run_audit_retention
from hub.alerts import Dispatcher
from hub.device_messages import make_ingest, serve_devices, telemetry_intake
from hub.fleet.classes import load_classes
from hub.fleet.deployments import Deployments, run_event_retention
from hub.fleet.progress import forget_presence
from hub.fleet.rollouts import Rollouts
from hub.ingest.report import Report
from hub.loop import Loop
from hub.ml.builds import Builds
from hub.ml.config import PipelineConfig, pipeline_config
from hub.ml.data.capture_versions import CaptureVersions
from hub.ml.data.captures import Datasets
from hub.ml.data.store import DatasetStore
from hub.ml.data.upload_resumer import UploadResumer
from hub.ml.jobs import STALE_S, Jobs, Progress
from hub.ml.registry import Registry
from hub.ml.retrain import Retrainer
from hub.settings import HubConfig, check_broker_transport
from hub.store.artifacts import ArtifactStore
from hub.store.datadir import check_private, create_private_file, private_umask
from hub.store.leader import AlwaysLeader, Leader, Leadership, abdicate, one_at_a_time
from hub.store.tables import Revocation, make_engine, sqlite_url
from hub.telemetry.drift import DriftMonitor, trust_baselines
from hub.telemetry.retention import RetentionPolicy, run_retention
from hub.transport.broker import BrokerAddress, EmbeddedBroker, Mosquitto, TlsIdentity
from hub.transport.budget import Budgets
from hub.transport.commands import DirectorCommands
from hub.transport.dynsec import broker_connections
from hub.transport.entitlements import load_entitlements
from hub.transport.fanout import FanOut
from hub.transport.fetch import FetchAnswers
from hub.transport.hub_links import device_link, fanout_link, hub_tls
from hub.transport.intake import start_intake
from hub.transport.link import MqttLink, leader_subscriptions
from hub.transport.local_broker import BrokerRecord, read_record, start_private_broker, write_record
from hub.transport.rotations import Rotations
from hub.trust.enrolment import ENROL_TTL_DEFAULT_S, EnrolTokens, NewEnrolToken
from hub.trust.identities import Identities
from hub.trust.pki import CertificateAuthority, PkiError
from hub.trust.repository import TrustRepository
from hub.workers import start_workers
from shared import protocol

log = logging.getLogger(__name__)

REVOCATIONS_REREAD_S = 5.0  # seconds a replica trusts its list of revoked devices

__all__ = ["Enrolment", "Hub", "HubConfig", "make_ingest", "pipeline_config", "serve_devices"]


@dataclass(frozen=True)
class Enrolment:
    token_id: str  # for the audit log; the token itself is never kept
    fields: dict[str, Any]  # the answer to the device (hub.api.routes.devices.EnrolResponse)


class Hub:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.classes = load_classes(config.classes_dir)  # ClassError: a bad profile
        self.local_broker: Mosquitto | EmbeddedBroker | None = None
        self.storage_warnings: list[str] = []  # a data dir or hub.db others can read
        # the single hub always leads; a replica campaigns (ADR 0032, hub/store/leader.py)
        self.leader: Leader = AlwaysLeader()
        self.lead_link: MqttLink | None = None  # a replica's link for the leader's topics
        self.fan_link: MqttLink | None = None  # the fan-out's own (hub/transport/hub_links.py)
        self.fanout: FanOut | None = None
        self._started = False

    # ------------------------------------------------------------- lifecycle

    def start(self) -> Hub:
        """Open the storage, connect to the broker, start the hub's threads."""
        with private_umask():  # what it creates (hub.db, keys, uploads) is its account's alone
            return self._start()

    def _start(self) -> Hub:
        cfg = self.config
        if cfg.broker_url:
            check_broker_transport(BrokerAddress.parse(cfg.broker_url), cfg)
        db_url = self._open_storage(cfg)
        self._select_broker(cfg)
        tls = hub_tls(self.broker, cfg.broker_tls_dir, cfg.replica)
        # drift windows are scored against the signed manifests' baselines
        self.drift = DriftMonitor(self.engine, trust_baselines(self.registry, self.trust))
        self.ingest = make_ingest(
            self.engine, raw_max_age_s=self.retention.raw_age_s, drift=self.drift
        )
        self.ingest.start()
        replica = cfg.replica is not None
        embedded = isinstance(self.local_broker, EmbeddedBroker)
        # telemetry: the ingest workers', else the hub's own intake (ADR 0033), else the link's
        spec = None if cfg.ingest_workers else telemetry_intake(
            self.broker, cfg.client_id, cfg.broker_tls_dir, replica=cfg.replica, embedded=embedded
        )  # fmt: skip
        telemetry = not cfg.ingest_workers and spec is None
        self.mqtt = device_link(self.broker, cfg.client_id, cfg.replica, tls, telemetry=telemetry)
        self.identities = self._identities(cfg)
        self.entitlements = load_entitlements(self.engine, shared=replica)
        self.commands = DirectorCommands(self.mqtt, self.trust, entitlements=self.entitlements)
        self._open_datasets(cfg)
        self.fetch = FetchAnswers(self.registry, self.trust, self.entitlements)
        self._open_fanout(cfg)
        budgets = Budgets(cfg.ingest_budget)  # one per device, whichever thread takes its reports
        serve_devices(
            self.mqtt, self.ingest, self.fetch, captures=self.datasets, revoked=self.revoked,
            budget=budgets, observe=self._fanout_observe(), renewals=self.identities.renewals,
        )  # fmt: skip
        if replica:
            lead_tls = hub_tls(self.broker, cfg.broker_tls_dir, cfg.replica, leader=True)
            self.lead_link = self._leader_link(lead_tls)
        self.workers = start_workers(
            cfg.ingest_workers,
            self.broker.url,
            db_url,
            tls_dir=cfg.broker_tls_dir,
            raw_max_age_s=self.retention.raw_age_s,
            budget=cfg.ingest_budget,
            embedded=embedded,
        )
        self.mqtt.start()
        self.intake = None if spec is None else start_intake(
            spec, self.broker, self.ingest, revoked=self.revoked, budget=budgets,
            counts=self.mqtt.counts, dropped=self.mqtt.dropped,
        )  # fmt: skip
        self.rollouts = Rollouts(
            self.engine,
            self.registry,
            self.commands,
            revoked=self.revoked,
            class_budget=self.classes.budget_mb,
            leading=lambda: self.leader.leading(),
            fanout=self.fanout,
        )
        self.deployments = Deployments(self.engine, self.rollouts)  # one-wave rollouts
        self._start_model_jobs()
        self.loop = Loop(self.engine, self.registry, self.datasets, self.retrainer, self.rollouts)
        # drift alerts, halts and loop outcomes to the receivers' webhooks (hub/alerts/)
        self.alerts = Dispatcher(self.engine, cfg.alerts)
        self.alerts.receivers.put_config(cfg.alert_receivers)
        self.enrol_tokens = EnrolTokens(self.engine)
        self._stopping = threading.Event()
        self._maintenance = threading.Thread(
            target=self._maintain, name="hub-maintenance", daemon=True
        )
        if replica:
            self.leader = Leadership(db_url, on_elected=self._lead, on_lost=abdicate).start()
        else:
            self._lead()
        self._started = True
        log.info("hub started: data %s, broker %s", cfg.data_dir, self.broker.url)
        return self

    def _open_fanout(self, cfg: HubConfig) -> None:
        """Chunks published once per round on a topic the wave's devices read (ADR 0030),
        on a link of their own when the broker knows its identity (ADR 0042)."""
        if cfg.fanout:
            self.fan_link = fanout_link(self.broker, cfg.client_id, cfg.broker_tls_dir)
            publisher = self.fan_link or self.mqtt
            self.fanout = FanOut(publisher, self.registry, qos=cfg.fanout_qos)

    def _open_datasets(self, cfg: HubConfig) -> None:
        """Datasets: uploaded and captured, with the versions captures make."""
        self.dataset_store = DatasetStore(
            self.engine, self.store, cfg.data_dir / "staging", cfg.max_dataset_bytes
        )
        self.capture_versions = CaptureVersions(self.engine, self.dataset_store)
        self.datasets = Datasets(
            self.engine,
            self.store,
            cfg.data_dir / "uploads",
            self.commands.send_command,
            on_dataset=self.capture_versions,
            send_request=self.commands.send_request,
        )
        self.upload_resumer = UploadResumer(self.datasets)  # started by the leader

    def _identities(self, cfg: HubConfig) -> Identities:
        """Certificates and revocations: the CRL for new connections, the broker's plugin
        over the link for open ones (ADR 0036); the CA and broker-certificate rotations."""
        tls_dir, replica = cfg.broker_tls_dir, cfg.replica is not None
        identities = Identities(
            self.engine,
            self.ca,
            crl_path=tls_dir / "crl.pem" if tls_dir else None,
            reload_command=cfg.broker_reload,
            reread_s=REVOCATIONS_REREAD_S if replica else None,
            connections=broker_connections(tls_dir, self.mqtt),
            device_days=cfg.device_cert_days,
        )
        # the CA and broker-certificate rotations: the operator's and the leader's timer's
        publish = lambda topic, payload: self.mqtt.publish(topic, payload, 1)  # noqa: E731
        self.rotations = Rotations(identities, tls_dir, publish, lambda: self.leader.leading())
        return identities

    def _lead(self) -> None:
        """Start what runs on one hub process only: the rollout engine, the closed loop,
        the alert dispatcher, re-signing and retention; a replica also takes over the
        leader's link, with the session and the messages the last leader left."""
        if self._stopping.is_set():  # elected while stopping: start nothing
            return
        if self.lead_link is not None:
            self.lead_link.start()
        if self.fan_link is not None:
            self.fan_link.start()
        if self.fanout is not None:
            self.fanout.start()
        self.rollouts.start()
        self.loop.start()
        self.alerts.start()
        self.upload_resumer.start()
        self._maintenance.start()

    def _fanout_observe(self) -> Callable[[Report], None] | None:
        """What sees each device report on its way to the ingest: the fan-out's readiness."""
        return self.fanout.observe if self.fanout is not None else None

    def _leader_link(self, tls: TlsIdentity | None) -> MqttLink:
        """A replica's second link, for what must be read in order per device or retained
        (states, events, captures): one client id every leader takes in turn."""
        self.lead_ingest = make_ingest(
            self.engine, raw_max_age_s=self.retention.raw_age_s, drift=self.drift
        )
        self.lead_ingest.start()
        link = MqttLink(
            self.broker,
            client_id=f"{self.config.client_id}-leader",
            tls=tls,
            subscriptions=leader_subscriptions(),
        )
        return serve_devices(
            link,
            self.lead_ingest,
            self.fetch,
            captures=self.datasets,
            revoked=self.revoked,
            budget=self.config.ingest_budget,
            observe=self._fanout_observe(),
            renewals=self.identities.renewals,
        )

    def _start_model_jobs(self) -> None:
        """Builds and retrains, in jobs; both make an artefact per runtime of the model's
        device classes, with their health budgets."""
        self.jobs = Jobs(self.engine, replica=self.config.replica is not None)
        self.builds = Builds(
            self.engine,
            self.registry,
            self.dataset_store,
            self.jobs,
            self.classes.runtimes,
            self.classes.health,
        )
        self.retrainer = Retrainer(
            self.registry,
            self.datasets,
            self.jobs,
            base_rows=self.builds.base_rows,
            runtimes_for=self.classes.runtimes,
            health_for=self.classes.health,
        )

    def _select_broker(self, cfg: HubConfig) -> None:
        """The broker given, else the hub's own (its port kept across starts); if it is
        another than the last start's, devices' presence from before is ``unknown``."""
        previous = read_record(cfg.data_dir)
        if cfg.broker_url:
            self.broker = BrokerAddress.parse(cfg.broker_url)
        else:
            self.local_broker = start_private_broker(cfg.data_dir, cfg.broker_port, previous)
            self.broker = self.local_broker.address
        local = self.local_broker
        pid = local.pid if isinstance(local, Mosquitto) else None
        record = BrokerRecord(self.broker.url, private=local is not None, pid=pid)
        write_record(cfg.data_dir, record)
        if record.forgets_devices(previous):
            forgotten = forget_presence(self.engine, before=time.time())
            if forgotten:
                log.info(
                    "broker %s is new: %d devices unknown until they report", record.url, forgotten
                )

    def _open_storage(self, cfg: HubConfig) -> str:
        """The database, trust metadata, device identities, artifacts and registry, in a
        data directory only the hub's account can read (hub/store/datadir.py)."""
        db_path = cfg.data_dir / "hub.db" if cfg.db_url is None else None
        # what an older hub (or a hand) left readable to others: said, not changed
        self.storage_warnings = check_private([cfg.data_dir, *([db_path] if db_path else [])])
        cfg.data_dir.mkdir(parents=True, exist_ok=True)  # 0700 under start's umask
        if db_path is not None:
            create_private_file(db_path)  # SQLite gives -wal and -shm its mode
        db_url = cfg.db_url or sqlite_url(cfg.data_dir / "hub.db")
        replica = cfg.replica is not None  # replicas share the database and data directory
        # replicas starting together create the schema, keys and CA one after the other
        with one_at_a_time(db_url, "storage") if replica else nullcontext():
            self.engine = make_engine(db_url)
            self.trust = TrustRepository.open_or_init(
                cfg.data_dir / "trust",
                root_keys_dir=cfg.root_keys_dir,
                exclusive=not replica,
                shared=replica,
            )
            ca = CertificateAuthority.open_or_init(cfg.data_dir / "pki")
        if replica:
            ca.share()  # enrolments and revocations through any replica
        self.ca = ca
        self.store = ArtifactStore(cfg.data_dir / "artifacts")
        self.registry = Registry(self.engine, self.store, self.trust, cfg.chunk_size)
        self.retention = RetentionPolicy(
            cfg.telemetry_raw_age_s, cfg.telemetry_max_age_s, cfg.telemetry_resolution_s
        )
        return db_url

    def stop(self) -> None:
        if not self._started:
            return
        self._stopping.set()
        if self._maintenance.ident is not None:
            self._maintenance.join()
        self.alerts.stop()
        self.upload_resumer.stop()
        self.loop.stop()
        self.rollouts.stop()
        if self.fanout is not None:
            self.fanout.stop()
        if self.fan_link is not None:
            self.fan_link.stop()
        self.jobs.shutdown()
        if self.lead_link is not None:
            self.lead_link.stop()
            self.lead_ingest.stop()
        if isinstance(self.leader, Leadership):
            self.leader.stop()  # its work stopped, the lock goes: another replica leads
        self.mqtt.stop()
        if self.intake is not None:
            self.intake.stop()
        if self.workers is not None:
            self.workers.stop()
        self.ingest.stop()
        if self.local_broker is not None:
            self.local_broker.stop()
        self.engine.dispose()
        self.trust.close()
        self._started = False

    def revoked(self) -> frozenset[str]:
        """The devices whose certificates are revoked: the one source every part reads.

        The broker's CRL stops new connections only; a revoked device still connected is
        ignored by the hub (DESIGN §8), and fleet code leaves it out.
        """
        return self.identities.revoked

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------- enrolment

    def issue_enrol_token(
        self,
        created_by: str,
        device_id: str | None = None,
        ttl_s: int = ENROL_TTL_DEFAULT_S,
        *,
        reenrol: bool = False,
    ) -> NewEnrolToken:
        """A one-time enrolment token, bound to ``device_id`` if given (shown once).

        Raises:
            PkiError: ``reserved_identity``: ``device_id`` is a name of the hub's.
            DeviceTaken: ``device_id`` already has an identity and this is no
                re-enrolment (an admin's, which may replace it).
        """
        if device_id is not None:
            self.identities.check_enrolment(device_id, reenrol=reenrol)
        return self.enrol_tokens.issue(created_by, device_id, ttl_s, reenrol=reenrol)

    def enrol_device(
        self,
        device_id: str,
        token: str,
        device_class: str | None = None,
        csr: str | None = None,
    ) -> Enrolment:
        """Use up a one-time token and answer with what the device needs to join: the
        TUF root to pin, the broker, and a certificate for the key in its ``csr`` (PEM).

        Raises:
            PkiError: a CSR that cannot be used, or none when the broker needs TLS, or
                ``reserved_identity`` for a name of the hub's (the token is not used up).
            EnrolRefused: the token is unknown, used, revoked, expired or for another id.
            DeviceTaken / DeviceRevoked: the id has an identity and the token is not an
                admin's re-enrolment token for it (the token is not used up).
        """
        if csr is None and self.broker.tls:
            raise PkiError("bad_csr", f"{self.broker.url} needs a client certificate: send a CSR")
        if csr is not None:
            self.identities.check_csr(device_id, csr.encode())
        record = self.enrol_tokens.find(token)
        reenrol = record is not None and record.reenrol and record.device_id == device_id
        self.identities.check_enrolment(device_id, reenrol=reenrol)
        used = self.enrol_tokens.consume(token, device_id)
        fields: dict[str, Any] = {
            "device_id": device_id,
            "root": self.trust.pinned_root().decode(),
            "broker": self.broker.url,
        }
        if csr is not None:
            cert = self.identities.issue(device_id, csr.encode(), reenrol=used.reenrol)
            fields["certificate"] = cert.cert_pem.decode()
            fields["ca"] = self.identities.ca.trust_pem.decode()
        return Enrolment(token_id=used.id, fields=fields)

    def revoke_device(self, device_id: str, reason: str, by: str | None) -> Revocation:
        """Revoke the device's certificates, tell the broker, and ignore it from now on.

        Raises:
            PkiError: an unknown CRL reason.
        """
        row = self.identities.revoke(device_id, reason, by)
        # Its retained state would otherwise stay in the broker for every new subscriber.
        self.mqtt.clear_retained(protocol.topic(device_id, "state"))
        return row

    def _maintain(self) -> None:
        """Re-sign TUF roles before they expire; re-issue the CRL and the broker's server
        certificate before they do; delete telemetry, drift windows, deployment events and
        audit records past their age; mark drift alerts of silent devices stale (and back
        when they report)."""
        while not self._stopping.wait(self.config.maintenance_s):
            try:
                renewed = self.trust.refresh_expiring()
                if renewed:
                    log.info("re-signed %s before expiry", ", ".join(renewed))
                self.identities.refresh_crl()
                self.rotations.refresh()  # the broker's server certificate, once due
                self.identities.sync_connections()  # ADR 0036
                run_retention(self.engine, self.retention)
                run_audit_retention(self.engine, self.config.audit_max_age_s)
                run_event_retention(self.engine, self.config.events_max_age_s)
                self.drift.sweep()
                if self.config.replica is not None:  # a replica killed mid-build
                    self.jobs.fail_orphans(STALE_S)
            except Exception:  # keep maintaining; the next round may succeed
                log.exception("hub maintenance failed")

    # ------------------------------------------------------------- operations

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
        return self.builds.builtin(
            config, progress, device_classes=device_classes, onnx_bytes=onnx_bytes
        )
