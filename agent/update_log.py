"""An update's steps in the agent's log, one INFO line per step.

The device publishes each step of a deployment as an event (docs/protocol.md); this
turns the same events into the lines an operator reads on the device::

    update fault-detector v3 (deployment d-12): deploy received
    update fault-detector v3 (deployment d-12): downloading
    update fault-detector v3 (deployment d-12): verified against its signed metadata
    update fault-detector v3 (deployment d-12): installed (staged beside the active model)
    update fault-detector v3 (deployment d-12): health check passed (p95 84 us)
    update fault-detector v3 (deployment d-12): activated (replacing v2); on probation
        for 30 s (at least 20 inferences)
    update fault-detector v3 (deployment d-12): healthy (40 inferences, 0 errors in probation)

A failure, a refusal or a rollback is a WARNING naming its reason code
(shared/reasons.py). A step reported again (a re-sent deploy is answered with the stage
the job is at) is logged once; the repeat goes to DEBUG.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

log = logging.getLogger("agent.update")

REMEMBERED_DEPLOYMENTS = 16  # deployments whose logged steps are kept (to log each once)

_SAID: dict[str, str] = {
    "received": "deploy received",
    "downloading": "downloading",
    "verified": "verified against its signed metadata",
    "staged": "installed (staged beside the active model)",
    "activated": "activated{from_version}; on probation",
    "healthy": "healthy",
    "rolled_back": "rolled back to this version{from_version}",
    "failed": "failed",
    "refused": "refused",
}
_WARN = frozenset({"failed", "refused", "rolled_back"})


class UpdateLog:
    """Logs each step of each deployment once."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self._said: OrderedDict[str, set[str]] = OrderedDict()  # deployment -> steps logged
        self._probation = ""  # of the model last checked: "for 30 s (at least 20 inferences)"

    def event(self, body: dict[str, Any]) -> None:
        """A deployment event the device published (its ``body``)."""
        stage = str(body.get("stage"))
        from_version = body.get("from_version")
        text = _SAID.get(stage, stage).format(
            from_version=f" (replacing v{from_version})" if from_version is not None else ""
        )
        if stage == "activated" and self._probation:
            text += f" {self._probation}"
        if stage == "rolled_back" and from_version is not None:
            text = f"rolled back from v{from_version}"
        if body.get("reason"):
            text += f": {body['reason']}"
        if body.get("detail"):
            text += f" ({body['detail']})"
        self.step(body, stage, text, logging.WARNING if stage in _WARN else logging.INFO)

    def health(self, body: dict[str, Any], passed: bool, detail: str, probation: str = "") -> None:
        """The staged model's health check ran (no event of its own: ``activated`` or
        ``failed`` follows). ``probation``: how long it lasts, said at activation."""
        self._probation = probation
        if passed:
            self.step(body, "health", f"health check passed ({detail})", logging.INFO)
        else:
            self.step(body, "health", f"health check failed: {detail}", logging.WARNING)

    def step(self, body: dict[str, Any], step: str, text: str, level: int) -> None:
        deployment = str(body.get("deployment"))
        said = self._said.setdefault(deployment, set())
        self._said.move_to_end(deployment)
        while len(self._said) > REMEMBERED_DEPLOYMENTS:
            self._said.popitem(last=False)
        key = step if step != "refused" else f"refused:{body.get('reason')}"
        if key in said:
            level = logging.DEBUG  # said already: a re-sent deploy answered with its stage
        said.add(key)
        log.log(
            level,
            "%s: update %s v%s (deployment %s): %s",
            self.device_id,
            body.get("model"),
            body.get("version"),
            deployment,
            text,
        )
