"""``edgefleet hub wait``: block until a hub answers at ``--hub``, for scripts that start
one in the background (``edgefleet hub serve ... &``) and call it next (README.md, "Run
the parts yourself").

Exit 0 once ``/health`` answers as a hub (and, with ``--device ID``, once the hub has
that device online: after ``edgefleet agent run ... &``); 1, with one line that says why,
when that does not happen in ``--timeout`` seconds or what answers is not a hub.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

__all__ = ["register"]

DEFAULT_WAIT_S = 60.0  # seconds: a hub starts its broker, keys and API in a few


def register(hub: Any, api: argparse.ArgumentParser) -> None:
    """Add ``wait`` to ``edgefleet hub``'s actions (``api``: ``--hub``, ``--api-key``)."""
    wait = hub.add_parser(
        "wait", parents=[api], help="wait until the hub at --hub answers (one starting)"
    )
    wait.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_S,
        help=f"seconds (default {DEFAULT_WAIT_S:g})",
    )
    wait.add_argument(
        "--device", metavar="ID", help="also wait until this device is online (needs a key)"
    )
    wait.set_defaults(func=_wait)


def _wait(args: argparse.Namespace) -> int:
    from edgefleet.client import HubClient

    deadline = time.monotonic() + args.timeout
    with HubClient(args.hub, api_key=args.api_key, timeout=5.0) as c:
        health = c.wait_ready(args.timeout)
        if args.device is None:
            broker = "broker link up" if health.get("broker_connected") else "broker link not up"
            print(f"hub: answering at {args.hub} ({broker})")
            return 0
        status = _device_status(c, args.device)
        while status != "online":
            if time.monotonic() > deadline:
                seen = f"it is {status}" if status else "the hub has not heard of it"
                raise TimeoutError(f"device {args.device} not online in {args.timeout:g} s: {seen}")
            time.sleep(0.25)
            status = _device_status(c, args.device)
    print(f"device {args.device}: online")
    return 0


def _device_status(c: Any, device_id: str) -> str | None:
    from edgefleet.client import HubClientError

    try:
        return str(c.device(device_id)["status"])
    except HubClientError as e:
        if e.status == 404:  # not heard of yet: it is starting
            return None
        raise
