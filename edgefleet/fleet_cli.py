"""``edgefleet models|devices|enrol-token|deploy``: the registry and the fleet, through the
admin API (edgefleet/client.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any, api: argparse.ArgumentParser) -> None:
    """Add the commands; ``api``: the parent parser with --hub/--api-key."""
    models = sub.add_parser("models", help="the model registry").add_subparsers(metavar="ACTION")
    mlist = models.add_parser("list", parents=[api], help="list model versions with metrics")
    mlist.set_defaults(func=_models_list)
    mtrain = models.add_parser("train", parents=[api], help="train, quantise, sign a model")
    mtrain.add_argument("--name", default="vibration")
    mtrain.add_argument("--n-train", type=int, default=12000)
    mtrain.add_argument("--max-int8-loss", type=float, default=1.0, help="points of accuracy")
    mtrain.set_defaults(func=_models_train)
    mup = models.add_parser("upload", parents=[api], help="upload your own ONNX model")
    mup.add_argument("--name", required=True)
    mup.add_argument("file", type=Path)
    mup.set_defaults(func=_models_upload)

    devs = sub.add_parser("devices", parents=[api], help="list devices")
    devs.set_defaults(func=_devices)

    tok = sub.add_parser(
        "enrol-token", parents=[api], help="issue a one-time enrolment token (operator)"
    )
    tok.add_argument("--device-id", help="bind the token to this device id")
    tok.add_argument("--ttl", type=int, help="seconds until it expires (default 3600)")
    tok.set_defaults(func=_enrol_token)

    dep = sub.add_parser("deploy", parents=[api], help="deploy a model version to devices")
    dep.add_argument("--model", required=True)
    dep.add_argument("--version", type=int)
    dep.add_argument("--devices", nargs="*", help="device ids (default: all)")
    dep.add_argument("--wait", action="store_true", help="follow progress until the end")
    dep.set_defaults(func=_deploy)


def _client(args: argparse.Namespace) -> Any:
    from edgefleet.client import HubClient

    return HubClient(args.hub, api_key=args.api_key)


def _models_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.models()
    print(f"{'model':<16}{'ver':>4}  {'bytes':>9}  {'acc fp32':>8}  {'acc int8':>8}  sha256")
    for r in rows:
        print(
            f"{r['name']:<16}{r['version']:>4}  {r['size_bytes']:>9}  "
            f"{_f(r['accuracy_fp32'])}  {_f(r['accuracy_int8'])}  {r['sha256'][:16]}"
        )
    return 0


def _f(x: float | None) -> str:
    return f"{x:>8.3f}" if x is not None else f"{'-':>8}"


def _models_train(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.train(name=args.name, n_train=args.n_train, max_int8_loss_points=args.max_int8_loss)
        done = c.wait_job(
            job["id"],
            on_progress=lambda j: print(f"  {j['stage'] or j['status']} {j['progress']:.0%}"),
        )
    print(json.dumps(done["result"], indent=2))
    return 0


def _models_upload(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.upload(args.name, args.file.read_bytes())
        done = c.wait_job(job["id"])
    print(json.dumps(done["result"], indent=2))
    return 0


def _devices(args: argparse.Namespace) -> int:
    with _client(args) as c:
        for d in c.devices():
            print(f"{d['id']:<24}{d['status']:<9}{d['model'] or '-'}:{d['version'] or '-'}")
    return 0


def _enrol_token(args: argparse.Namespace) -> int:
    import time

    with _client(args) as c:
        t = c.create_enrol_token(args.device_id, args.ttl)
    print(t["token"])
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["expires_at"]))
    bound = f" for device {t['device_id']}" if t["device_id"] else ""
    print(f"(one-time enrolment token {t['id']}{bound}, valid until {until})", file=sys.stderr)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    import time

    with _client(args) as c:
        st = c.deploy(args.model, args.version, args.devices or None)
        print(f"deployment {st['id']}: {args.model} v{st['version']} to {st['devices']} devices")
        while args.wait and not st["finished"]:
            time.sleep(1)
            st = c.deployment(st["id"], devices=False)
            print(f"  {st['converged']}/{st['devices']} healthy  {st['stages']}")
    return 0
