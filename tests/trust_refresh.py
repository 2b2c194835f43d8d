"""Answering a core's trust refresh in tests of the sans-I/O agent core.

A rollback or capture command is held until the device has walked to the hub's newest
root (agent/core/commands.py): the core publishes a ``fetch_meta`` and acts once the adapter
reports ``TrustRefreshed``. Tests of what such a command does answer that refresh the way
the device adapter would when the hub has nothing newer.
"""

from __future__ import annotations

import json
from typing import Any

from agent.core import AgentCore
from agent.events import Event, Publish, TrustRefreshed
from shared.director import DirectorKeys


def handle_trusting(
    core: AgentCore, event: Event, keys: DirectorKeys, root_version: int = 1
) -> list[Any]:
    """``core.handle(event)``, then the answer to any trust refresh it asked for."""
    actions = core.handle(event)
    out = list(actions)
    for a in actions:
        if isinstance(a, Publish) and a.topic.endswith("/fetch"):
            msg = json.loads(a.payload)
            if msg["type"] == "fetch_meta":
                now = float(msg["ts"])
                out += core.handle(TrustRefreshed(msg["body"]["req"], root_version, keys, now))
    return out
