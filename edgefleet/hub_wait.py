"""``edgefleet hub wait``: block until a hub answers at ``--hub``, for scripts that start
one in the background (``edgefleet hub serve ... &``) and call it next (README.md, "Run
the parts yourself").

Exit 0 once ``/health`` answers as a hub (and, with ``--device ID``, once the hub has
that device online: after ``edgefleet agent run ... &``); 1, with one line that says why,
when that does not happen in ``--timeout`` seconds or what answers is not a hub.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, client

__all__ = ["wait"]

DEFAULT_WAIT_S = 60.0  # seconds: a hub starts its broker, keys and API in a few


def wait(
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = DEFAULT_WAIT_S,
    device: Annotated[
        str | None,
        typer.Option(
            "--device", metavar="ID", help="Also wait until this device is online (needs a key)."
        ),
    ] = None,
) -> int:
    deadline = time.monotonic() + timeout
    with client(hub, api_key, timeout=5.0) as c:
        health = c.wait_ready(timeout)
        if device is None:
            broker = "broker link up" if health.get("broker_connected") else "broker link not up"
            print(f"hub: answering at {hub} ({broker})")
            return 0
        status = _device_status(c, device)
        while status != "online":
            if time.monotonic() > deadline:
                seen = f"it is {status}" if status else "the hub has not heard of it"
                raise TimeoutError(f"device {device} not online in {timeout:g} s: {seen}")
            time.sleep(0.25)
            status = _device_status(c, device)
    print(f"device {device}: online")
    return 0


def _device_status(c: Any, device_id: str) -> str | None:
    from edgefleet.client import HubClientError

    try:
        return str(c.device(device_id)["status"])
    except HubClientError as e:
        if e.status == 404:  # not heard of yet: it is starting
            return None
        raise
