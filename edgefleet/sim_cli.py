"""``edgefleet sim run`` (the fleet simulator) and ``edgefleet demo`` (hub and simulated
fleet, end to end, on this machine: edgefleet/demo.py and edgefleet/demo_data.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from edgefleet.options import DEFAULT_HUB

sim = typer.Typer(no_args_is_help=True, help="The fleet simulator.")
DATA_PANEL = "Your own data (edgefleet/demo_data.py): upload, train, roll out, live figures"

Summary = Annotated[Path | None, typer.Option("--summary", help="Write the summary as JSON here.")]
LateShare = Annotated[
    float, typer.Option("--late-share", help="With --rows: labels sent later (0..1).")
]

Scenario = Annotated[
    Path | None,
    typer.Option(
        "--scenario",
        help="A scenario file (TOML, see simulator/scenarios/): broker, hub, fleet, rollout"
        " and faults, all on this machine; ignores the other options but --summary and"
        " --work-dir.",
    ),
]
Rows = Annotated[
    Path | None,
    typer.Option(
        "--rows",
        metavar="FILE",
        help="Infer on this labelled CSV or NPZ's rows instead of the sensor generator.",
    ),
]


def register(app: typer.Typer) -> None:
    """``edgefleet sim run`` and ``edgefleet demo``."""
    sim.command(
        "run", help="Run N simulated devices against a broker, or rehearse a scenario (--scenario)."
    )(sim_run)
    app.add_typer(sim, name="sim")
    app.command("demo", help="Hub + simulated fleet, end to end, on this machine.")(demo)


Stay = Annotated[
    bool,
    typer.Option("--stay", help="Keep the hub and devices up after the summary for the dashboard."),
]
Port = Annotated[
    int | None,
    typer.Option(
        "--port", min=1, max=65535, help="The API's and dashboard's port (default: a free one)."
    ),
]


def demo(
    devices: Annotated[int, typer.Option("--devices", help="Simulated devices.")] = 50,
    summary: Annotated[
        Path | None, typer.Option("--summary", help="Also write the summary as JSON here.")
    ] = None,
    broker: Annotated[
        str | None, typer.Option("--broker", help="Use this MQTT broker (mqtt://host:port).")
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Keep hub and device state here.")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to converge.")] = 180.0,
    stay: Stay = False,
    port: Port = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset", metavar="FILE", help="A labelled CSV or NPZ.", rich_help_panel=DATA_PANEL
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(
            "--label", help="The label column of a CSV (NPZ: y).", rich_help_panel=DATA_PANEL
        ),
    ] = None,
    task: Annotated[
        Literal["classification", "regression"] | None,
        typer.Option("--task", help="Default: inferred.", rich_help_panel=DATA_PANEL),
    ] = None,
    kind: Annotated[
        Literal["mlp", "cnn"],
        typer.Option("--kind", help="cnn: images, windows.", rich_help_panel=DATA_PANEL),
    ] = "mlp",
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="The dataset's and model's name (default: the file's).",
            rich_help_panel=DATA_PANEL,
        ),
    ] = None,
    play: Annotated[
        Literal["holdout", "all"],
        typer.Option(
            "--play",
            rich_help_panel=DATA_PANEL,
            help="Rows the devices infer on: those held out to judge the model, or all.",
        ),
    ] = "holdout",
    late_share: Annotated[
        float,
        typer.Option("--late-share", help="Labels sent later (0..1).", rich_help_panel=DATA_PANEL),
    ] = 0.3,
) -> int:
    from edgefleet.demo import DemoOptions, run_demo

    if devices < 1:
        raise ValueError("--devices must be at least 1")
    opts = DemoOptions(
        devices=devices,
        summary_path=summary,
        broker_url=broker,
        work_dir=work_dir,
        converge_timeout_s=timeout,
        stay=stay,
        api_port=port,
    )
    if dataset is None:
        said = run_demo(opts)
        return 0 if said["converged"] == said["devices"] else 1
    from edgefleet.demo_data import DataOptions, run_dataset_demo

    data = DataOptions(dataset, label, task, kind, name, play, late_share=late_share)
    said = run_dataset_demo(opts, data)
    if summary:
        summary.write_text(json.dumps(said, indent=2) + "\n")
    return 0 if said["running"] == devices else 1


def sim_run(
    scenario: Scenario = None,
    devices: Annotated[int, typer.Option("--devices", help="Simulated devices.")] = 100,
    broker: Annotated[
        str | None, typer.Option("--broker", help="mqtt://host:port (required without --scenario).")
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="A pinned TUF root.json (else --hub/--token).")
    ] = None,
    hub: Annotated[
        str, typer.Option("--hub", help="The hub to fetch the root from.")
    ] = DEFAULT_HUB,
    token: Annotated[
        str | None, typer.Option("--token", help="Enrolment token, to fetch the root from --hub.")
    ] = None,
    duration: Annotated[float, typer.Option("--duration", help="Seconds to run.")] = 60.0,
    processes: Annotated[int, typer.Option("--processes", help="OS processes to spread over.")] = 1,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir",
            help="Device state (default edgefleet-data/sim; with --scenario a new temp dir).",
        ),
    ] = None,
    id_prefix: Annotated[str, typer.Option("--id-prefix", help="Device ids' prefix.")] = "sim",
    device_class: Annotated[
        str, typer.Option("--device-class", help="The devices' class.")
    ] = "sim-gateway",
    rows: Rows = None,
    label: Annotated[
        str | None, typer.Option("--label", help="With --rows: the label column of a CSV (NPZ: y).")
    ] = None,
    late_share: LateShare = 0.0,
    summary: Summary = None,
) -> int:
    if scenario is not None:  # exit 0 when every device converged, else 1
        return _rehearse(scenario, work_dir, summary)
    from hub.transport.broker import BrokerAddress
    from simulator.fleet import FleetConfig, run_fleet

    if broker is None:
        raise ValueError("give --broker mqtt://host:port, or --scenario FILE")
    addr = BrokerAddress.parse(broker)
    pinned = _pinned_root(root, token, hub, id_prefix)
    played = None
    if rows is not None:
        from simulator.rows import load_rows

        played = load_rows(rows, label)  # a bad file: RowsError, one line
    said = run_fleet(
        FleetConfig(
            devices=devices,
            host=addr.host,
            port=addr.port,
            work_dir=work_dir or Path("edgefleet-data/sim"),
            pinned_root=pinned,
            id_prefix=id_prefix,
            device_class=device_class,
            rows=played,
            late_label_share=late_share,
        ),
        duration_s=duration,
        processes=processes,
    )
    out = json.dumps(said.__dict__, indent=2)
    print(out)
    if summary:
        summary.write_text(out + "\n")
    return 0


def _rehearse(scenario: Path, work_dir: Path | None, summary: Path | None) -> int:
    from edgefleet.rehearsal import run_scenario
    from simulator.scenario import load_scenario

    loaded = load_scenario(scenario)  # a bad file fails here, before any start
    result = run_scenario(loaded, work_dir).summary
    text = json.dumps(result, indent=2)
    print(text)
    if summary:
        summary.write_text(text + "\n")
    return 0 if result["converged"] == result["devices"] else 1


def _pinned_root(root: Path | None, token: str | None, hub: str, id_prefix: str) -> bytes:
    if root is not None:
        return root.read_bytes()
    if token:
        from edgefleet.client import HubClient

        with HubClient(hub) as c:
            return str(c.enrol(f"{id_prefix}-image", token)["root"]).encode()
    raise ValueError("give --root FILE, or --token (and --hub) to fetch the root")
