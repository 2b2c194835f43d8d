"""docs/client.md's examples run as written: its Python blocks, in order and in one
namespace (as a reader pastes them into one session), against a real hub (real uvicorn,
SQLite, Mosquitto) with two simulated devices, with the hub's URL and key in the
environment as the page says. What they print is what the page's comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from fleet_rig import fleet_rig

from hub.access.keys import DEV_KEY
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[1] / "docs" / "client.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_pages_examples_run_against_a_real_hub(
    private_mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 5, "docs/client.md lost its examples"
    # a broker of its own: the page prints how many devices the hub knows
    with fleet_rig(private_mosquitto, tmp_path, devices=2, prefix="doc", rows_per_s=0) as rig:
        monkeypatch.setenv("EDGEFLEET_HUB", rig.api.url)
        monkeypatch.setenv("EDGEFLEET_API_KEY", DEV_KEY)
        namespace: dict[str, object] = {"__name__": "docs_client"}
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            for block in blocks:
                exec(compile(block, str(DOC), "exec"), namespace)  # the page's own code
        ids = sorted(d.id for d in rig.client.devices())
    printed = out.getvalue()
    assert "broker connected: True" in printed
    for device in ids:
        assert f"{device} online gateway []" in printed, printed
    assert re.search(r"^enrolment token \w+ expires at \d+$", printed, re.M), printed
    assert f"online: {ids}" in printed, printed
    assert "2 devices; 3 classes; 0 rollouts" in printed
    assert "404 no device 'no-such-device'" in printed
    assert "422 limit: must be at most 1000" in printed
    assert "no hub: connection refused" in printed
    assert "'id'" in printed and "'status'" in printed  # sorted(device): the keys
