"""What an operator reads while a model builds and rolls out (issue "The first hour of a
new operator", item 10): in a log (not a terminal) one line per stage, in words, none
twice, no percentages; then the build's figures (``int8: 12,665 bytes (0.54× fp32),
accuracy 0.919 (-0.0 pt): gates passed``); the demo's rollout counted one way throughout.

``edgefleet models train`` runs against a real ``edgefleet hub serve`` child process;
the demo runs whole (real hub, real Mosquitto, simulated devices running the agent).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import pytest

from edgefleet.cli import main
from edgefleet.demo import DemoOptions, run_demo, wave_words, waves_words
from edgefleet.progress import JobProgress, UploadProgress
from edgefleet.stage import HubProcess
from hub.access.keys import DEV_KEY
from hub.transport.broker import Mosquitto

TRAIN_LINES = [
    "reading the dataset",
    "training the float32 model",
    "quantising to int8",
    "scoring on the hold-out rows",
    "checking the gates",
    "recording the drift reference",
    "choosing the self-test rows",
    "signing and publishing",
]
INT8_LINE = re.compile(
    r"int8: [\d,]+ bytes \(0\.\d\d× fp32\), accuracy 0\.\d{3} \([+-]\d+\.\d pt\): gates passed"
)


def polled(*stages: tuple[str, float], status: str = "running") -> list[dict[str, object]]:
    return [
        {"kind": "train", "status": status, "stage": s, "progress": p, "result": None}
        for s, p in stages
    ]


def test_a_log_gets_each_stage_once_even_when_polls_skip_some() -> None:
    out = io.StringIO()
    show = JobProgress(out)
    # polls see train many times, and miss quantize, evaluate, baseline and golden
    for job in polled(("dataset", 0.0), ("train", 0.05), ("train", 0.05), ("train", 0.4)):
        show(job)
    for job in polled(("gate", 0.8), ("sign", 0.95), ("sign", 0.95)):
        show(job)
    assert out.getvalue().splitlines() == [f"  {w}" for w in TRAIN_LINES]


@pytest.fixture(scope="module")
def hub(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path_factory.mktemp("progress") / "hub", mosquitto.address.url)
    yield proc.start()
    proc.stop()


@pytest.mark.broker
def test_models_train_shows_every_stage_once_with_its_figures(
    hub: HubProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["models", "train", "--hub", hub.url, "--api-key", DEV_KEY, "--n-train", "2000"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [line.strip() for line in err.splitlines()]
    assert lines[: len(TRAIN_LINES)] == TRAIN_LINES  # each once, in order
    figures = lines[len(TRAIN_LINES) :]
    assert re.fullmatch(r"float32: [\d,]+ bytes, accuracy 0\.\d{3}", figures[0]), figures
    assert INT8_LINE.fullmatch(figures[1]), figures
    assert "%" not in err and "baseline" not in err
    assert re.match(r"vibration v\d+ signed: ", out)


@pytest.mark.parametrize(
    ("wave", "waves", "said"),
    [(1, 4, "wave 1/4 (the canary)"), (2, 4, "wave 2/4"), (4, 4, "wave 4/4")],
)
def test_the_demo_counts_waves_one_way(wave: int, waves: int, said: str) -> None:
    assert wave_words(wave, waves) == said
    assert waves_words(4) == "4 waves: the canary, then 3 more"
    assert waves_words(1) == "1 wave: the canary"


@pytest.mark.broker
@pytest.mark.slow
def test_the_demo_log_says_each_training_stage_once_and_counts_waves_one_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = run_demo(DemoOptions(devices=4, n_train=2000, infer_s=1.0, probation_s=1.0))
    assert summary["converged"] == 4
    err = capsys.readouterr().err
    train = [line for line in err.splitlines() if line.startswith("train  ")]
    assert train == [f"train  {w}" for w in TRAIN_LINES]
    assert any(INT8_LINE.search(line) for line in err.splitlines() if line.startswith("model  "))
    waves = {int(m[2]) for m in re.finditer(r"wave (\d)/(\d)", err)}
    (total,) = waves or {0}
    assert f"{total} waves: the canary, then {total - 1} more" in err
    assert "canary + " not in err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_rewritten_in_words_then_the_figures() -> None:
    out = Terminal()
    show = JobProgress(out)
    for job in polled(("dataset", 0.0), ("train", 0.4), ("train", 0.4), ("gate", 0.8)):
        show(job)
    result = {
        "metrics": {
            "fp32": {"accuracy": 0.92, "size_bytes": 23_003},
            "int8": {"accuracy": 0.919, "size_bytes": 12_665},
        },
        "gates": [{"name": "int8_loss", "passed": True}],
    }
    show({"kind": "train", "status": "done", "stage": "sign", "progress": 1.0, "result": result})
    text = out.getvalue()
    # a Rich bar, redrawn in place; the repeated poll drew nothing
    bar = text.split("\n")[0]  # every frame on one line, each drawn over the last
    assert "reading the dataset" in bar and "checking the gates" in bar
    assert bar.count("training the float32 model") == 1
    assert re.search(r"100%\S*\s+signing and publishing$", bar), text
    assert text.endswith(
        "  float32: 23,003 bytes, accuracy 0.920\n"
        "  int8: 12,665 bytes (0.55× fp32), accuracy 0.919 (-0.1 pt): gates passed\n"
    )


def test_an_upload_draws_a_bar_on_a_terminal_and_nothing_in_a_log() -> None:
    term, log = Terminal(), io.StringIO()
    for out in (term, log):
        show = UploadProgress("wine.csv", 3 * 2**20, out)
        for sent in (2**20, 2 * 2**20, 3 * 2**20):
            show(sent)
    assert log.getvalue() == ""
    bar = term.getvalue()
    assert "uploading wine.csv" in bar and "3.1/3.1 MB" in bar and bar.endswith("\n\x1b[?25h")
