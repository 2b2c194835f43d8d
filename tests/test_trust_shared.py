"""Hub replicas on one data directory share the TUF repository and the device CA
(hub/trust/sharing.py): what one signs the other serves, concurrent writes never lose a
target, neither a single hub nor ``edgefleet keys`` can take the repository from running
replicas, and no enrolment or revocation through one replica is lost by another."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography import x509
from test_pki import make_csr
from tuf.api.metadata import Targets

from hub.trust.pki import CertificateAuthority
from hub.trust.repository import RepositoryError, TrustRepository
from shared.trust import parse_metadata


def test_a_target_signed_by_one_replica_is_served_by_the_other(tmp_path: Path) -> None:
    a = TrustRepository.open_or_init(tmp_path / "trust", shared=True)
    b = TrustRepository.open_or_init(tmp_path / "trust", shared=True)
    a.add_target("m/1/model.onnx", b"model bytes", {"version": 1})
    assert b.target_names() == ["m/1/model.onnx"]
    files = dict(b.metadata_for(1, "m/1/model.onnx"))
    served = parse_metadata(Targets, files["model-m.json"])  # the model's role (ADR 0037)
    assert "m/1/model.onnx" in served.signed.targets
    a.close()
    b.close()


def test_concurrent_writes_from_two_replicas_keep_every_target(tmp_path: Path) -> None:
    a = TrustRepository.open_or_init(tmp_path / "trust", shared=True)
    b = TrustRepository.open_or_init(tmp_path / "trust", shared=True)

    def add(repo: TrustRepository, who: str) -> None:
        for i in range(15):
            repo.add_target(f"{who}/{i}/model.onnx", f"{who}{i}".encode(), {"i": i})
            repo.refresh_timestamp(10**9)  # the timestamp re-signed in between, too

    threads = [threading.Thread(target=add, args=(r, w)) for r, w in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = sorted(f"{who}/{i}/model.onnx" for who in "ab" for i in range(15))
    assert a.target_names() == expected
    assert b.target_names() == expected
    a.close()
    b.close()
    fresh = TrustRepository.open_or_init(tmp_path / "trust")  # what is on disk: all of them
    assert fresh.target_names() == expected


def test_neither_a_single_hub_nor_the_keys_cli_takes_it_from_replicas(tmp_path: Path) -> None:
    replica = TrustRepository.open_or_init(tmp_path / "trust", shared=True)
    with pytest.raises(RepositoryError, match="in use by another process"):
        TrustRepository.open_or_init(tmp_path / "trust", exclusive=True)
    replica.close()
    single = TrustRepository.open_or_init(tmp_path / "trust", exclusive=True)
    with pytest.raises(RepositoryError, match="in use by another process"):
        TrustRepository.open_or_init(tmp_path / "trust", shared=True)
    single.close()


def test_replicas_share_the_device_ca_without_losing_an_issue_or_a_revocation(
    tmp_path: Path,
) -> None:
    a = CertificateAuthority.open_or_init(tmp_path / "pki")
    b = CertificateAuthority.open_or_init(tmp_path / "pki")
    a.share()
    b.share()
    issued: list[int] = []
    for i in range(6):  # enrolments through either replica, in turn
        ca = (a, b)[i % 2]
        issued.append(ca.issue_device(make_csr(f"dev-{i}"), f"dev-{i}").serial)
    b.revoke(issued[0], "key_compromise")
    a.revoke(issued[1], "key_compromise")
    for ca in (a, b):
        assert [s for i in range(6) for s in ca.serials_for(f"dev-{i}")] == issued
        assert {r.serial for r in ca.revoked()} == {issued[0], issued[1]}
    fresh = CertificateAuthority.open_or_init(tmp_path / "pki")  # what is on disk
    assert {r.serial for r in fresh.revoked()} == {issued[0], issued[1]}
    crl = x509.load_pem_x509_crl(a.crl_pem())
    assert {r.serial_number for r in crl} == {issued[0], issued[1]}
