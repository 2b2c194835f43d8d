"""Dataset uploads through the real hub and API (ADR 0014): versions, schema, refusals.

A real hub (SQLite file, artifact store) behind a real uvicorn; files written to disk
and uploaded with the Python client, as the CLI does. Every refusal is asserted by the
message a user reads, and by what the hub kept afterwards (nothing).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_wine

from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker]


@pytest.fixture(scope="module")
def stage(
    mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Hub, HubClient, HubClient]]:
    tmp = tmp_path_factory.mktemp("datasets-api")
    hub = Hub(
        HubConfig(data_dir=tmp / "hub", broker_url=mosquitto.address.url, client_id="hub-ds-api")
    ).start()
    api = ApiServer(hub).start()
    keys = ApiKeys(hub.engine)
    operator = HubClient(api.url, api_key=keys.create("o", Role.operator, "test").key)
    viewer = HubClient(api.url, api_key=keys.create("v", Role.viewer, "test").key)
    yield hub, operator, viewer
    operator.close()
    viewer.close()
    api.stop()
    hub.stop()


def wine_csv(path: Path, *, rows: int | None = None, label: str = "cultivar") -> Path:
    data = load_wine()
    x, y = data.data[:rows], data.target[:rows]
    names = [n.replace("/", "_") for n in data.feature_names]
    lines = [",".join([*names, label])]
    lines += [",".join([*(f"{v:.6g}" for v in r), f"class_{t}"]) for r, t in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def kept_files(hub: Hub) -> set[Path]:
    """Every file the hub's artifact store and staging hold."""
    roots = [hub.store.root, hub.dataset_store.staging]
    return {p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()}


def refused(client: HubClient, name: str, path: Path, **kw: Any) -> HubClientError:
    with pytest.raises(HubClientError) as caught:
        client.upload_dataset(name, path, **kw)
    return caught.value


def test_a_csv_becomes_a_version_addressed_by_its_content(
    stage: tuple[Hub, HubClient, HubClient], tmp_path: Path
) -> None:
    _, operator, viewer = stage
    path = wine_csv(tmp_path / "wine.csv")
    v = operator.upload_dataset("wine", path, label="cultivar")
    assert v["created"] and v["id"] == "wine:1" and v["rows"] == 178
    assert (v["task"], v["kind"], v["format"]) == ("classification", "tabular", "csv")
    schema = v["data_schema"]
    assert schema["task_inferred"] is True
    assert schema["classes"] == ["class_0", "class_1", "class_2"]
    assert [f["name"] for f in schema["features"]][:2] == ["alcohol", "malic_acid"]
    assert schema["row_shape"] == [13]

    again = operator.upload_dataset("wine", path, label="cultivar")
    assert (again["id"], again["created"]) == ("wine:1", False)
    assert [d["id"] for d in viewer.datasets("wine")] == ["wine:1"]

    # Addressed by seq, by a hash prefix, and as the latest; downloaded byte for byte.
    assert viewer.dataset("wine:1")["sha256"] == v["sha256"]
    assert viewer.dataset(f"wine:{v['sha256'][:8]}")["id"] == "wine:1"
    assert viewer.dataset("wine")["id"] == "wine:1"
    out = viewer.download_dataset("wine:1", tmp_path / "back.csv")
    assert out.read_bytes() == path.read_bytes()

    changed = tmp_path / "wine2.csv"
    changed.write_bytes(path.read_bytes() + path.read_bytes().splitlines(keepends=True)[-1])
    assert operator.upload_dataset("wine", changed, label="cultivar")["id"] == "wine:2"
    assert viewer.dataset("wine")["id"] == "wine:2"

    with pytest.raises(HubClientError, match=r"no dataset 'wine:7'; wine has versions 1, 2"):
        viewer.dataset("wine:7")
    with pytest.raises(HubClientError) as caught:
        viewer.upload_dataset("wine", path, label="cultivar")
    assert caught.value.status == 403


def test_the_task_is_stated_back_or_taken_as_given(
    stage: tuple[Hub, HubClient, HubClient], tmp_path: Path
) -> None:
    _, operator, _ = stage
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(0, 0.1, 300)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    v = operator.upload_dataset("reg", tmp_path / "reg.npz")
    assert (v["task"], v["data_schema"]["task_inferred"], v["format"]) == (
        "regression",
        True,
        "npz",
    )
    assert v["data_schema"]["classes"] is None

    labels = rng.integers(0, 3, 300)
    np.savez(tmp_path / "ints.npz", x=x, y=labels)
    as_reg = operator.upload_dataset("ints", tmp_path / "ints.npz", task="regression")
    assert (as_reg["task"], as_reg["data_schema"]["task_inferred"]) == ("regression", False)


def test_parquet_and_image_npz(stage: tuple[Hub, HubClient, HubClient], tmp_path: Path) -> None:
    _, operator, _ = stage
    rng = np.random.default_rng(2)
    table = pa.table(
        {
            "a": rng.normal(size=60),
            "b": rng.integers(0, 5, 60),
            "kind": rng.choice(["x", "y"], 60),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    v = operator.upload_dataset("pq", tmp_path / "t.parquet", label="kind")
    assert (v["format"], v["rows"], v["data_schema"]["classes"]) == ("parquet", 60, ["x", "y"])

    images = rng.random((50, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "img.npz", x=images, y=np.arange(50) % 2)
    img = operator.upload_dataset("img", tmp_path / "img.npz")
    assert (img["kind"], img["data_schema"]["row_shape"]) == ("image", [8, 8])


BAD_CSVS = [
    # (name, csv text, upload kwargs, message the user reads)
    (
        "no-label",
        "a,b,y\n1,2,0\n",
        {"label": "target"},
        "no column 'target'",
    ),
    (
        "text",
        "a,b,y\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(16)) + "3,n/a,1\n",
        {"label": "y"},
        "column 'b' row 17",
    ),
    (
        "missing",
        "a,b,y\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(8)) + "3,,1\n",
        {"label": "y"},
        "column 'b' row 9",
    ),
    (
        "one-class",
        "a,y\n" + "".join(f"{i},same\n" for i in range(20)),
        {"label": "y"},
        "only one class",
    ),
    ("few", "a,y\n1,0\n2,1\n3,0\n", {"label": "y"}, "3 rows"),
    (
        "lonely-class",
        "a,y\n" + "".join(f"{i},{'rare' if i == 0 else i % 2}\n" for i in range(30)),
        {"label": "y"},
        "'rare' (1 row)",
    ),
]


@pytest.mark.parametrize(("name", "text", "kw", "message"), BAD_CSVS, ids=[b[0] for b in BAD_CSVS])
def test_bad_uploads_get_a_422_naming_the_column_and_row_and_leave_nothing(
    stage: tuple[Hub, HubClient, HubClient],
    tmp_path: Path,
    name: str,
    text: str,
    kw: dict[str, Any],
    message: str,
) -> None:
    hub, operator, viewer = stage
    before = kept_files(hub)
    path = tmp_path / f"{name}.csv"
    path.write_text(text)
    err = refused(operator, f"bad-{name}", path, **kw)
    assert err.status == 422, err
    assert message in err.message
    assert viewer.datasets(f"bad-{name}") == []
    assert kept_files(hub) == before  # nothing half-written stays behind


def test_bad_files_and_names(stage: tuple[Hub, HubClient, HubClient], tmp_path: Path) -> None:
    hub, operator, _ = stage
    before = kept_files(hub)
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((20, 3), dtype=np.float32))
    (tmp_path / "noy.npz").write_bytes(buf.getvalue())
    assert "y" in refused(operator, "noy", tmp_path / "noy.npz").message
    (tmp_path / "empty.csv").write_bytes(b"")
    assert refused(operator, "empty", tmp_path / "empty.csv").status == 400
    (tmp_path / "ok.csv").write_text("a,y\n1,0\n")
    assert "invalid dataset name" in refused(operator, "Bad Name", tmp_path / "ok.csv").message
    assert kept_files(hub) == before


def test_a_file_over_the_cap_is_refused_while_it_streams(
    stage: tuple[Hub, HubClient, HubClient], tmp_path: Path
) -> None:
    hub, operator, _ = stage
    before = kept_files(hub)
    path = wine_csv(tmp_path / "wine.csv")
    cap = hub.dataset_store.max_bytes
    hub.dataset_store.max_bytes = 4096
    try:
        err = refused(operator, "big", path, label="cultivar")
    finally:
        hub.dataset_store.max_bytes = cap
    assert err.status == 413 and "4096 byte limit" in err.message
    assert kept_files(hub) == before
