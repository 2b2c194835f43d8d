"""The agent core: a sans-I/O state machine for one device (DESIGN §5, docs/adr/0001).

``AgentCore.handle(event) -> list[Action]`` is the one entry point. The modules behind
this package are private; these are its public names.
"""

from agent.core.config import AGENT_VERSION, KEEP_VERSIONS, MAX_HELD_COMMANDS, CoreConfig
from agent.core.core import AgentCore
from agent.core.job import Job
from agent.core.phases import Phase, TransitionError, Trigger
from agent.core.state import DeviceState, encode_state

__all__ = [
    "AGENT_VERSION",
    "KEEP_VERSIONS",
    "MAX_HELD_COMMANDS",
    "AgentCore",
    "CoreConfig",
    "DeviceState",
    "Job",
    "Phase",
    "TransitionError",
    "Trigger",
    "encode_state",
]
