"""Hub replicas on a TLS broker (ADR 0032): the broker takes a certificate's name as the
client id, so each replica, and the leader's link, connects with an identity of its own
(``edgefleet broker config --hub-replicas N``); none takes another's session over."""

from __future__ import annotations

import os
import pwd
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from waiting import wait_for

from hub import Hub, HubConfig
from hub.transport.broker import free_port
from hub.transport.brokerconf import TlsMosquitto, acl_text, write_broker_config
from hub.trust.pki import CertificateAuthority
from shared.protocol import ROOT

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@pytest.fixture
def db_url() -> Iterator[str]:
    name = f"replica_tls_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{name}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'DROP SCHEMA "{name}" CASCADE')


def test_the_acl_gives_each_replica_identity_the_hubs_rights() -> None:
    acl = acl_text("edgefleet-hub", 0, 2)
    for name in ("edgefleet-hub", "edgefleet-hub-0", "edgefleet-hub-1", "edgefleet-hub-leader"):
        assert f"user {name}\ntopic readwrite {ROOT}/#\n" in acl
    assert "edgefleet-hub-2" not in acl
    assert acl_text() == acl_text("edgefleet-hub", 0, 0)  # no replicas: as before


def test_two_replicas_and_the_leaders_link_stay_connected_side_by_side(
    tmp_path: Path, db_url: str
) -> None:
    data = tmp_path / "hub"
    ca = CertificateAuthority.open_or_init(data / "pki")  # the hub's CA, as broker config uses
    user = pwd.getpwuid(os.geteuid()).pw_name
    files = write_broker_config(
        tmp_path / "broker", ca, port=free_port(), user=user, ingest_workers=0, hub_replicas=2
    )
    url = f"mqtts://localhost:{files.port}"
    with TlsMosquitto(files):
        hubs = [
            Hub(
                HubConfig(
                    data_dir=data,
                    db_url=db_url,
                    broker_url=url,
                    broker_tls_dir=files.directory,
                    replica=i,
                    dev_mode=True,
                )
            )
            for i in (0, 1)
        ]
        try:
            for h in hubs:
                h.start()
            wait_for(lambda: sum(h.leader.leading() for h in hubs) == 1, 20, "one leader")
            leader = next(h for h in hubs if h.leader.leading())
            assert leader.lead_link is not None
            wait_for(leader.lead_link.connected.is_set, 20, "the leader's link")
            time.sleep(3.0)  # a client id taken twice would be kicked off, and flap
            assert all(h.mqtt.connected.is_set() for h in hubs)
            assert leader.lead_link.connected.is_set()
            follower = next(h for h in hubs if h is not leader)
            assert follower.lead_link is not None and not follower.lead_link.connected.is_set()
        finally:
            for h in hubs:
                h.stop()


def test_a_replica_without_its_identity_is_refused_with_what_to_do(
    tmp_path: Path, db_url: str
) -> None:
    data = tmp_path / "hub"
    ca = CertificateAuthority.open_or_init(data / "pki")
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), ingest_workers=0)
    hub = Hub(
        HubConfig(
            data_dir=data,
            db_url=db_url,
            broker_url=f"mqtts://localhost:{files.port}",
            broker_tls_dir=files.directory,
            replica=0,
        )
    )
    try:
        with pytest.raises(ValueError, match=r"no identity hub-0 .* --hub-replicas"):
            hub.start()
    finally:  # what it opened before it found the identity missing
        hub.engine.dispose()
        hub.trust.close()
