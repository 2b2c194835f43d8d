"""README.md's "Run the parts yourself" block works when pasted whole (issue "The first
hour of a new operator", item 5): extracted from the README and run as one bash script in
a fresh directory, with the real ``edgefleet`` command of this venv, a real hub (its own
Mosquitto), a real agent and curl. Its last line stops what it started; the test then
checks that nothing it started is left, and kills whatever is as a fallback.

The block uses the default ports (the hub's API on 8700, the agent's endpoint on 8780):
the test skips when something else holds one of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PORTS = (8700, 8780)  # the hub's API, the agent's local endpoint: the block's defaults
RUN_TIMEOUT_S = 600.0  # seconds: training on the shared 2-core machine is most of it


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Run the parts yourself") :]
    found = re.search(r"```bash\n(.*?)```", section, re.S)
    assert found is not None, "no bash block under 'Run the parts yourself'"
    return found[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def session_processes(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def test_the_block_runs_pasted_whole_and_stops_what_it_started(tmp_path: Path) -> None:
    if not all(port_free(p) for p in PORTS):
        pytest.skip(f"a port the README block uses by default is taken: {PORTS}")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    block = readme_block()
    assert block.lstrip().startswith(". .venv/bin/activate")
    assert "edgefleet hub wait " in block and "edgefleet hub wait --device press-17" in block
    assert "kill %2 %1" in block
    # a fresh directory with this venv where the README expects it (./.venv)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    script = tmp_path / "block.sh"
    script.write_text("set -eo pipefail\n" + block + "echo BLOCK-DONE\n")
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_API_KEY"}
    env["PYTHONPATH"] = str(REPO)  # this tree's code, whichever checkout the venv installed
    log = tmp_path / "block.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(script)], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        code = proc.wait(RUN_TIMEOUT_S)
        text = log.read_text(errors="replace")
        assert code == 0, text[-3000:]
        assert "BLOCK-DONE" in text
        assert "hub: answering at http://127.0.0.1:8700" in text
        assert re.search(r"vibration v1 signed", text), text[-3000:]
        # rollout create --watch exits 0 only for a completed rollout (set -e above);
        # its wording is rollout_cli's own, so only the gist is checked here
        assert re.search(r"completed", text, re.IGNORECASE), text[-3000:]
        assert re.search(r"press-17\s.*healthy", text), text[-3000:]
        # curl prints no newline: the two answers run together in the log
        answers = json.JSONDecoder().raw_decode(text[text.index('{"id":') :])[0]
        assert answers["model"] == "vibration" and len(answers["outputs"]["label"]) == 1
        assert '"unknown":1' in text  # the labels line, sent with its placeholder id
        deadline = time.monotonic() + 20
        while (left := session_processes(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == [], f"left running after the block's stop line: {left}"
        assert all(port_free(p) for p in PORTS)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the block left behind
        proc.wait(10)
