"""What ``edgefleet rollout watch`` shows: a rollout's live view (counts per device state,
the current wave, the failure ratio, devices on probation), redrawn once a second until
it is finished, then each device's outcome. Ctrl-C stops the watching, not the rollout:
:func:`interrupted` says so, with the commands to watch or abort it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # imported when used: a device with the agent extra has no httpx
    from edgefleet.client import HubClient

__all__ = [
    "follow",
    "follow_or_say",
    "healthy_bar",
    "interrupted",
    "live_console",
    "outcome",
    "probation_terms",
    "render",
]

WATCH_S = 1.0  # seconds between redraws


def follow_or_say(client: HubClient, rollout_id: str, hub: str, out: TextIO | None = None) -> int:
    """Follow the rollout; on Ctrl-C, say that the rollout goes on and how to reach it."""
    try:
        return follow(client, rollout_id, out)
    except KeyboardInterrupt:
        print(interrupted("rollout", rollout_id, hub), file=sys.stderr)
        raise  # the CLI exits 130


def interrupted(kind: str, rollout_id: str, hub: str) -> str:
    """What Ctrl-C while following a rollout (or a deployment, one) leaves behind: the
    commands to reach it again (with the hub it was started on)."""
    at = f" --hub {hub}"
    return (
        f"\nstopped watching; the {kind} {rollout_id} continues on the hub.\n"
        f"  watch it:  edgefleet rollout watch {rollout_id}{at}\n"
        f"  abort it:  edgefleet rollout abort {rollout_id}{at}"
        "  (add --rollback to put back the devices it changed)"
    )


def follow(client: HubClient, rollout_id: str, out: TextIO | None = None) -> int:
    """Redraw the rollout's view until it is finished (on a terminal a live view with a
    bar of healthy devices; in a log each view that changed), then each device's
    outcome; 0 if it completed, 1 otherwise."""
    out = out or sys.stdout  # (looked up now: a test captures it)
    st = (
        _follow_live(client, rollout_id, out)
        if out.isatty()
        else _follow_log(client, rollout_id, out)
    )
    for d in client.rollout_devices(rollout_id):
        reason = f" ({d['reason']})" if d.get("reason") else ""
        out.write(f"  {d['device_id']:<24} wave {d['wave'] + 1}  {outcome(d)}{reason}\n")
    return 0 if st["state"] == "completed" else 1


def _follow_log(client: HubClient, rollout_id: str, out: TextIO) -> Mapping[str, Any]:
    last = ""
    while True:
        st = client.rollout(rollout_id)
        view = render(st)
        if view != last:  # a log, not an animation: print what changed
            out.write(view + "\n")
            out.flush()
        last = view
        if st["finished"]:
            return st
        time.sleep(WATCH_S)


def _follow_live(client: HubClient, rollout_id: str, out: TextIO) -> Mapping[str, Any]:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    with Live(console=live_console(out), auto_refresh=False) as live:
        while True:
            st = client.rollout(rollout_id)
            live.update(Group(Text(render(st)), healthy_bar(st)), refresh=True)
            if st["finished"]:
                return st
            time.sleep(WATCH_S)


def live_console(out: TextIO) -> Any:
    """A Rich console for a live view on the terminal ``out``."""
    from rich.console import Console

    return Console(file=out, markup=False, highlight=False, no_color="NO_COLOR" in os.environ)


def healthy_bar(st: Mapping[str, Any]) -> Any:
    """A bar of the healthy devices of a rollout or deployment status, and the count."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        Text("  healthy"),
        ProgressBar(total=max(st["devices"], 1), completed=st["converged"], width=40),
        Text(f"{st['converged']}/{st['devices']}"),
    )
    return bar


def render(st: Mapping[str, Any]) -> str:
    """The live view of one rollout status (``GET /rollouts/{id}``)."""
    counts = "  ".join(f"{k} {v}" for k, v in sorted(st["counts"].items()))
    lines = [
        f"rollout {st['id']}  {st['model']} v{st['version']}  {st['state'].upper()}"
        f"  wave {st['wave']}/{st['waves']}",
        f"  {st['converged']}/{st['devices']} healthy  failures {st['failures']}"
        f" ({st['failure_ratio']:.0%})  rolled back {st['rolled_back']}",
        f"  {counts}",
    ]
    lines += probation_lines(st)
    if st.get("offline"):
        lines.append(f"  {st['offline']} offline: sent again when they are back")
    if st.get("halted_reason"):
        lines.append(f"  halted: {st['halted_reason']}")
    return "\n".join(lines)


def probation_terms(spec: dict[str, Any]) -> str:
    """The probation a rollout asked for, in words."""
    seconds, least = spec.get("probation_s"), spec.get("probation_min_inferences")
    if seconds is None and least is None:
        return "as the model's manifest says (each device reports it when it activates)"
    said = [f"{seconds:g} s" if seconds is not None else "the manifest's length"]
    said.append(f"at least {least} inferences" if least is not None else "the manifest's minimum")
    return ", ".join(said) + " (this rollout's)"


def probation_lines(st: Mapping[str, Any]) -> list[str]:
    """Devices on probation: time left and the live inferences seen against the minimum;
    and the healthy ones whose probation saw no inference."""
    lines = []
    if st.get("in_probation"):
        lines.append(f"  on probation {st['in_probation']}:")
        for p in st.get("probation", []):
            if p["left_s"] > 0:
                left = f"{p['left_s']:.0f} s left"
            elif p["min_inferences"] and p["inferences"] < p["min_inferences"]:
                left = f"waiting for traffic, up to {p['max_left_s']:.0f} s more"
            else:
                left = "being judged"
            least = p["min_inferences"] if p["min_inferences"] is not None else "?"
            lines.append(f"    {p['device']:<24} {left}  {p['inferences']}/{least} inferences seen")
        hidden = st["in_probation"] - len(st.get("probation", []))
        if hidden > 0:
            lines.append(f"    … and {hidden} more")
    if st.get("healthy_without_traffic"):
        lines.append(
            f"  {st['healthy_without_traffic']} healthy with no inferences during probation"
            " (no evidence either way)"
        )
    return lines


def outcome(row: Mapping[str, Any]) -> str:
    """A device's state, saying when "healthy" rested on no traffic at all."""
    if row["state"] == "healthy" and (row.get("probation") or {}).get("inferences") == 0:
        return "healthy (no inferences during probation)"
    return str(row["state"])
