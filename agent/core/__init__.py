"""The agent core: a sans-I/O state machine for one device (DESIGN §5, docs/adr/0001).

``AgentCore.handle(event) -> list[Action]`` is the one entry point; the modules behind
this package are private.
"""

from agent.core.core import (
    AGENT_VERSION,
    KEEP_VERSIONS,
    MAX_HELD_COMMANDS,
    AgentCore,
    CoreConfig,
    encode_state,
)

__all__ = [
    "AGENT_VERSION",
    "KEEP_VERSIONS",
    "MAX_HELD_COMMANDS",
    "AgentCore",
    "CoreConfig",
    "encode_state",
]
