"""``edgefleet datasets`` and ``edgefleet models``: what an operator types and reads.

The CLI's ``main`` against a real hub behind a real uvicorn; the assertions are on what
it prints and its exit status.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sklearn.datasets import load_breast_cancer

from edgefleet.cli import main as cli
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def hub_api(
    mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("datasets-cli")
    hub = Hub(
        HubConfig(data_dir=tmp / "hub", broker_url=mosquitto.address.url, client_id="hub-ds-cli")
    ).start()
    api = ApiServer(hub).start()
    yield api.url, ApiKeys(hub.engine).create("o", Role.operator, "test").key
    api.stop()
    hub.stop()


def cancer_csv(path: Path) -> Path:
    d = load_breast_cancer()
    names = [f"f{i}" for i in range(d.data.shape[1])]
    rows = [
        ",".join([*(f"{v:.6g}" for v in r), d.target_names[t]])
        for r, t in zip(d.data, d.target, strict=True)
    ]
    path.write_text("\n".join([",".join([*names, "diagnosis"]), *rows]) + "\n")
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_upload_list_show_download(
    hub_api: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, key = hub_api
    api = ["--hub", url, "--api-key", key]
    csv = cancer_csv(tmp_path / "cancer.csv")
    code, out, _ = run(
        ["datasets", "upload", str(csv), "--name", "cancer", "--label", "diagnosis", *api], capsys
    )
    assert code == 0
    assert "dataset cancer:1" in out and "569 rows, tabular [30]" in out
    assert "task classification (inferred), label 'diagnosis'" in out
    assert "2 classes: benign, malignant" in out

    code, out, _ = run(
        ["datasets", "upload", str(csv), "--name", "cancer", "--label", "diagnosis", *api], capsys
    )
    assert code == 0 and "already cancer:1: nothing new was stored" in out

    code, out, _ = run(["datasets", "list", *api], capsys)
    assert code == 0 and "cancer:1" in out and "classification" in out

    code, out, _ = run(["datasets", "show", "cancer", *api], capsys)
    assert code == 0 and "f29" in out

    dest = tmp_path / "back.csv"
    code, out, _ = run(["datasets", "download", "cancer:1", "-o", str(dest), *api], capsys)
    assert code == 0 and dest.read_bytes() == csv.read_bytes()

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    code, _, err = run(
        ["datasets", "upload", str(bad), "--name", "bad", "--label", "y", *api], capsys
    )
    assert code == 1 and "422" in err and "no column 'y'" in err and err.count("\n") == 1


def test_train_runs_and_lineage(
    hub_api: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, key = hub_api
    api = ["--hub", url, "--api-key", key]
    csv = cancer_csv(tmp_path / "cancer.csv")
    assert (
        cli(["datasets", "upload", str(csv), "--name", "cancer", "--label", "diagnosis", *api]) == 0
    )
    capsys.readouterr()

    code, out, err = run(
        ["models", "train", "--name", "cancer", "--dataset", "cancer", *api], capsys
    )
    assert code == 0, err
    assert "cancer v1 signed: cancer/1/model.onnx (classification)" in out
    assert "accuracy" in out and "macro_f1" in out and "size_bytes" in out
    assert "gate int8_loss  pass" in out
    # a log gets each stage once, in words, to the end, and no percentages
    assert "training the float32 model" in err and "signing and publishing" in err
    assert "%" not in err

    code, out, err = run(
        [
            "models",
            "train",
            "--name",
            "cancer",
            "--dataset",
            "cancer",
            "--min-accuracy",
            "0.999",
            *api,
        ],
        capsys,
    )
    assert code == 1 and "refused: model refused by floor" in err
    assert "gate floor      FAIL" in err and "int8" in err

    code, out, _ = run(["models", "list", *api], capsys)
    assert code == 0 and "classification" in out and "cancer:1" in out

    code, out, _ = run(["models", "runs", "cancer", *api], capsys)
    runs = [line.split() for line in out.splitlines()]
    assert code == 0 and ["published", "v1"] in [r[1:3] for r in runs] and "refused" in out

    code, out, _ = run(["models", "lineage", "cancer:1", *api], capsys)
    assert code == 0
    assert "dataset   cancer:1  sha256" in out and "569 rows" in out
    assert "signed    cancer/1/model.onnx" in out and "running on 0 device(s)" in out

    code, _, err = run(["models", "lineage", "cancer", *api], capsys)
    assert code == 2 and "NAME:VERSION" in err
