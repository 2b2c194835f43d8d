"""``edgefleet keys``: the hub's TUF keys — create, show, rotate, renew the root.

Works on the hub's data directory (``DATA_DIR/trust``) while the hub is stopped; a
running hub holds the repository's lock (rotate through the admin API instead). Root
keys may live offline: ``--root-keys DIR`` names where they are (a removable disk), and
the hub runs without them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgefleet.broker_cli import DEFAULT_DATA_DIR


def register(subparsers: Any) -> None:
    """Add ``keys init|show|rotate|renew-root`` to the ``edgefleet`` subparsers."""
    keys = subparsers.add_parser("keys", help="the hub's signing keys (TUF roles, director)")
    actions = keys.add_subparsers(metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        "--data",
        dest="data_dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the hub's data directory (default edgefleet-data)",
    )
    common.add_argument(
        "--db", help="the hub's database URL, for the audit log (default: DATA_DIR/hub.db)"
    )
    common.add_argument(
        "--root-keys",
        type=Path,
        help="directory of the root keys, if kept offline (default DATA_DIR/trust/keys/root)",
    )

    init = actions.add_parser("init", parents=[common], help="create the keys and root v1")
    init.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="ROLE=N",
        help="signatures a role needs, e.g. root=2; repeatable (default 1)",
    )
    init.add_argument(
        "--keys",
        action="append",
        default=[],
        metavar="ROLE=M",
        help="keys made for a role (default: its threshold), e.g. root=3 for 2-of-3",
    )
    init.set_defaults(func=_init)

    show = actions.add_parser("show", parents=[common], help="roles, thresholds, key ids")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_show)

    rotate = actions.add_parser(
        "rotate", parents=[common], help="replace a role's keys; root N+1 signed by N"
    )
    rotate.add_argument("role", choices=("root", "targets", "snapshot", "timestamp", "director"))
    rotate.add_argument("--threshold", type=int, help="new threshold (default: unchanged)")
    rotate.add_argument("--keys", type=int, help="keys to make (default: as many as now)")
    rotate.set_defaults(func=_rotate)

    renew = actions.add_parser(
        "renew-root", parents=[common], help="sign a new root version with a fresh expiry"
    )
    renew.set_defaults(func=_renew_root)


def _open(args: argparse.Namespace, *, exclusive: bool = True, **kwargs: Any) -> Any:
    from hub.trust.repository import TrustRepository

    return TrustRepository.open_or_init(
        args.data_dir / "trust", root_keys_dir=args.root_keys, exclusive=exclusive, **kwargs
    )


def _role_numbers(items: list[str], flag: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        role, sep, n = item.partition("=")
        if not sep or not n.isdigit():
            raise ValueError(f"{flag} takes ROLE=N, got {item!r}")
        out[role] = int(n)
    return out


def _init(args: argparse.Namespace) -> int:
    thresholds = _role_numbers(args.threshold, "--threshold")
    counts = _role_numbers(args.keys, "--keys")
    if (args.data_dir / "trust" / "metadata" / "root.json").exists():
        raise ValueError(f"{args.data_dir / 'trust'} already has keys: use show or rotate")
    repo = _open(args, thresholds=thresholds, key_counts=counts)
    try:
        keys = repo.keys()
        _print_keys(keys)
    finally:
        repo.close()
    _audit(args, "signing_key.init", "trust", after=_summary(keys))
    return 0


def _show(args: argparse.Namespace) -> int:
    if not (args.data_dir / "trust" / "metadata" / "root.json").exists():
        raise ValueError(f"no keys in {args.data_dir / 'trust'}: edgefleet keys init")
    repo = _open(args, exclusive=False)  # reading only: fine beside a running hub
    try:
        keys = repo.keys()
    finally:
        repo.close()
    if args.json:
        print(json.dumps(keys, indent=2))
    else:
        _print_keys(keys)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    repo = _open(args)
    try:
        before = repo.keys()
        version = repo.rotate(args.role, threshold=args.threshold, keys=args.keys)
        print(f"rotated {args.role}: root is now version {version}, signed by the old root keys")
        after = repo.keys()
        _print_keys(after)
    finally:
        repo.close()
    _audit(
        args,
        "signing_key.rotate",
        args.role,
        before=_summary(before, args.role),
        after=_summary(after, args.role),
    )
    return 0


def _renew_root(args: argparse.Namespace) -> int:
    repo = _open(args)
    try:
        before = repo.keys()["root"]
        version = repo.renew_root()
        expires = repo.root_expires().isoformat()
        print(f"root version {version}, expires {expires}")
    finally:
        repo.close()
    _audit(
        args,
        "signing_key.renew_root",
        "root",
        before={"version": before["version"], "expires": before["expires"]},
        after={"version": version, "expires": expires},
    )
    return 0


def _summary(keys: dict[str, dict[str, Any]], role: str | None = None) -> dict[str, Any]:
    """Key ids and thresholds (never key material), of one role or all, plus the root
    version."""
    roles = [role] if role else list(keys)
    out: dict[str, Any] = {
        r: {"keyids": keys[r]["keyids"], "threshold": keys[r]["threshold"]} for r in roles
    }
    out["root_version"] = keys["root"]["version"]
    return out


def _audit(args: argparse.Namespace, action: str, target: str, **change: Any) -> None:
    from edgefleet.local_audit import record

    command = f"edgefleet keys {action.rpartition('.')[2].replace('_', '-')}"
    record(args.data_dir, args.db, action, target, command, **change)


def _print_keys(keys: dict[str, dict[str, Any]]) -> None:
    root = keys["root"]
    print(f"root version {root['version']}, expires {root['expires']}")
    for role, info in keys.items():
        ids = ", ".join(k[:12] for k in info["keyids"])
        print(
            f"  {role:<10} threshold {info['threshold']}  keys here "
            f"{info['keys_here']}/{len(info['keyids'])}  [{ids}]"
        )
