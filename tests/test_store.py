"""The device's own files: state saved whole and private, whatever the durability asked."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.store import DeviceStore


@pytest.mark.parametrize("durable", [True, False])
def test_state_is_saved_private_and_reads_back(tmp_path: Path, durable: bool) -> None:
    store = DeviceStore(tmp_path / "dev")
    state = {"models": {}, "seq": 7, "job": None, "req": 3, "commands": {"a": 1.5}}

    store.save_state(state, durable)

    assert stat.S_IMODE(store.state_path.stat().st_mode) == 0o600
    assert DeviceStore(tmp_path / "dev").load_state() == state
    assert [p.name for p in store.state_path.parent.iterdir() if p.name.startswith(".")] == []
