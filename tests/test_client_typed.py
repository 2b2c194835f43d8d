"""The Python clients against a real hub (real uvicorn, SQLite, Mosquitto, simulated
devices running the real agent code): answers are the routes' response models, read by
attribute and, as the dicts they replace, by key; the async client answers what the sync
one does and raises the same errors (docs/client.md).

pytest-asyncio is not installed: the async client runs under ``asyncio.run`` inside
these sync tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fleet_rig import Rig, fleet_rig
from waiting import wait_for

from edgefleet.client import HubClient, HubClientError, HubConnectionError
from edgefleet.client_async import AsyncHubClient
from edgefleet.output import print_json
from hub.access.keys import DEV_KEY
from hub.api.views.datasets import DatasetUploaded
from hub.api.views.devices import DeviceView, EnrolTokenCreated
from hub.api.views.models import JobView, ModelVersionView
from hub.api.views.rollouts import DeploymentStatusView
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@dataclass
class Stage:
    rig: Rig
    model: str
    deployment: str

    @property
    def client(self) -> HubClient:
        return self.rig.client

    def run_async(self, use: Callable[[AsyncHubClient], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            async with AsyncHubClient(self.rig.api.url, api_key=DEV_KEY) as hub:
                return await use(hub)

        return asyncio.run(main())


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """A hub with two simulated devices on a broker of its own (the rig counts the
    devices online: another test's on a shared broker would be counted too)."""
    work = tmp_path_factory.mktemp("client-typed")
    with (
        Mosquitto() as broker,
        fleet_rig(broker, work, devices=2, prefix="ct", rows_per_s=0) as rig,
    ):
        model = rig.train()["name"]
        dep = rig.client.create_deployment(model, devices=[d.device_id for d in rig.devices])
        wait_for(lambda: rig.client.deployment(dep.id, devices=False).finished, 60, "deployed")
        yield Stage(rig, model, dep.id)


def test_answers_read_by_attribute_and_as_the_dicts_they_replace(stage: Stage) -> None:
    c = stage.client
    devices = c.devices()
    assert [type(d) for d in devices] == [DeviceView, DeviceView]
    d = devices[0]
    assert d.status == d["status"] == "online" and d.get("status") == "online"
    assert d.version == d["version"] == 1 and d.model == stage.model
    assert "id" in d and "no-such-field" not in d and d.get("no-such-field", 7) == 7
    with pytest.raises(KeyError):
        d["no-such-field"]
    assert dict(d)["id"] == d.id and list(d) == list(d.keys()) and "last_seen" in list(d)
    # the keys are what the hub sent: the JSON of a raw request, field for field
    raw = httpx.get(
        f"{stage.rig.api.url}/devices/{d.id}", headers={"authorization": f"Bearer {DEV_KEY}"}
    ).json()
    assert sorted(d) == sorted(raw)
    assert d == {**raw, "last_seen": d.last_seen}
    models = c.models(stage.model)
    assert isinstance(models[0], ModelVersionView) and models[0].version == 1
    assert models[0]["sha256"] == models[0].sha256
    status = c.deployment(stage.deployment)
    assert isinstance(status, DeploymentStatusView)
    assert status.converged == status["converged"] == 2 and status.finished
    assert {row["device"] for row in status.per_device} == {x.id for x in devices}


def test_secrets_stay_out_of_listed_tokens_and_keys(stage: Stage) -> None:
    c = stage.client
    made = c.create_enrol_token(ttl_s=60)
    assert isinstance(made, EnrolTokenCreated) and made.token
    listed = [t for t in c.enrol_tokens() if t.id == made.id]
    assert len(listed) == 1 and "token" not in listed[0] and "token_sha256" not in listed[0]
    made_key = c.create_api_key("typed", "viewer")
    assert made_key.key.startswith("ef_") and made_key.role == "viewer"
    keys = c.api_keys()
    assert keys and all("secret_sha256" not in k and "key" not in k for k in keys)


def test_cli_json_of_a_model_is_the_hubs_json(
    stage: Stage, capsys: pytest.CaptureFixture[str]
) -> None:
    d = stage.client.device(stage.rig.devices[0].device_id)
    print_json({"device": d, "list": [d]})
    printed = json.loads(capsys.readouterr().out)
    assert printed["device"] == printed["list"][0] == json.loads(d.model_dump_json())
    assert printed["device"]["revoked"] is None and printed["device"]["tags"] == []


READS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("device_classes", (), {}),
    ("signing_keys", (), {}),
    ("api_keys", (), {}),
    ("rollouts", (), {}),
    ("deployments", (), {}),
    ("models", (), {}),
    ("audit", (), {"limit": 20}),
]


def test_the_async_client_answers_what_the_sync_one_does(stage: Stage) -> None:
    m, dep = stage.model, stage.deployment
    reads = [
        *READS,
        ("runs", (m,), {}),
        ("lineage", (m, 1), {}),
        ("deployment", (dep,), {}),
        ("events", (dep,), {}),
        ("drift_policy", (m,), {}),
        ("device_class", ("generic-linux",), {}),
    ]
    sync = [getattr(stage.client, name)(*args, **kw) for name, args, kw in reads]

    async def together(hub: AsyncHubClient) -> list[Any]:
        return list(await asyncio.gather(*(getattr(hub, n)(*a, **k) for n, a, k in reads)))

    answers = stage.run_async(together)
    for (name, _, _), s, a in zip(reads, sync, answers, strict=True):
        assert type(a) is type(s) and a == s, name
        assert s, f"{name}: nothing to compare"
    ids = {d.id for d in stage.client.devices()}
    assert {d.id for d in stage.run_async(lambda hub: hub.devices())} == ids


def test_both_clients_raise_the_hubs_refusals_and_missing_hubs(stage: Stage) -> None:
    c = stage.client
    with pytest.raises(HubClientError) as sync_404:
        c.device("no-such-device")
    with pytest.raises(HubClientError) as sync_422:
        c.enrol_tokens(limit=5000)

    async def refused(hub: AsyncHubClient) -> list[HubClientError]:
        out = []
        for call in (lambda: hub.device("no-such-device"), lambda: hub.enrol_tokens(limit=5000)):
            try:
                await call()
            except HubClientError as e:
                out.append(e)
        return out

    async_404, async_422 = stage.run_async(refused)
    assert sync_404.value.status == async_404.status == 404
    assert sync_404.value.message == async_404.message == "no device 'no-such-device'"
    assert sync_422.value.status == async_422.status == 422
    assert sync_422.value.message == async_422.message and "limit" in async_422.message
    assert async_422.detail == sync_422.value.detail and async_422.detail[0]["loc"]

    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there
    with pytest.raises(HubConnectionError, match="connection refused"):
        HubClient(closed).health()

    async def nowhere() -> None:
        async with AsyncHubClient(closed) as hub:
            await hub.health()

    with pytest.raises(HubConnectionError, match="connection refused"):
        asyncio.run(nowhere())


def wine_like_csv(path: Path, rows: int = 60) -> Path:
    lines = ["a,b,c,kind"] + [f"{i % 7},{i % 5 * 0.5},{i % 3},k{i % 3}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_uploads_and_downloads_stream_on_both_clients(stage: Stage, tmp_path: Path) -> None:
    csv = wine_like_csv(tmp_path / "small.csv")
    seen: list[int] = []
    first = stage.client.upload_dataset("small", csv, label="kind", on_bytes=seen.append)
    assert isinstance(first, DatasetUploaded) and first.created and first["created"]
    assert seen[-1] == csv.stat().st_size

    async def again(hub: AsyncHubClient) -> tuple[DatasetUploaded, Path]:
        up = await hub.upload_dataset("small", csv, label="kind", on_bytes=seen.append)
        return up, await hub.download_dataset(up.id, tmp_path / "back.csv")

    same, back = stage.run_async(again)
    assert not same.created and same.id == first.id == "small:1"
    assert back.read_bytes() == csv.read_bytes()
    with pytest.raises(HubClientError, match="no dataset"):
        stage.client.download_dataset("nothing-here:9", tmp_path / "none.csv")


def test_jobs_are_polled_to_their_end_on_the_async_client(stage: Stage) -> None:
    job_id = stage.client.upload(stage.model, b"not a model", unevaluated=True).id
    progress: list[JobView] = []

    async def wait(hub: AsyncHubClient) -> JobView:
        return await hub.wait_job(job_id, timeout=60, on_progress=progress.append)

    with pytest.raises(HubClientError) as failed:
        stage.run_async(wait)
    assert failed.value.status == 422 and progress and progress[-1].status == "failed"
