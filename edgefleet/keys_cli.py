"""``edgefleet keys``: the hub's TUF keys — create, show, rotate, renew the root.

Works on the hub's data directory (``DATA_DIR/trust``) while the hub is stopped; a
running hub holds the repository's lock (rotate through the admin API instead). Root
keys may live offline: ``--root-keys DIR`` names where they are (a removable disk), and
the hub runs without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from edgefleet.broker_cli import DEFAULT_DATA_DIR
from edgefleet.options import Json
from edgefleet.output import emit, table

keys = typer.Typer(
    no_args_is_help=True, help="The hub's signing keys (TUF roles, director), on its disk."
)

DataDir = Annotated[Path, typer.Option("--data-dir", "--data", help="The hub's data directory.")]
Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="EDGEFLEET_DB_URL",
        help="The hub's database URL, for the audit log (default: $EDGEFLEET_DB_URL, else"
        " DATA_DIR/hub.db).",
    ),
]
RootKeys = Annotated[
    Path | None,
    typer.Option(
        "--root-keys",
        help="Directory of the root keys, if kept offline (default DATA_DIR/trust/keys/root).",
    ),
]
RoleName = Literal["root", "targets", "snapshot", "timestamp", "director"]


def register(app: typer.Typer) -> None:
    """``edgefleet keys init|show|rotate|renew-root``."""
    keys.command("init", help="Create the keys and root v1.")(init)
    keys.command("show", help="Roles, thresholds, key ids.")(show)
    keys.command("rotate", help="Replace a role's keys; root N+1 signed by N.")(rotate)
    keys.command("renew-root", help="Sign a new root version with a fresh expiry.")(renew_root)
    app.add_typer(keys, name="keys")


def _open(data_dir: Path, root_keys: Path | None, *, exclusive: bool = True, **kw: Any) -> Any:
    from hub.trust.repository import TrustRepository

    return TrustRepository.open_or_init(
        data_dir / "trust", root_keys_dir=root_keys, exclusive=exclusive, **kw
    )


def _role_numbers(items: list[str], flag: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        role, sep, n = item.partition("=")
        if not sep or not n.isdigit():
            raise ValueError(f"{flag} takes ROLE=N, got {item!r}")
        out[role] = int(n)
    return out


def init(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    db: Db = None,
    root_keys: RootKeys = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            "--threshold",
            metavar="ROLE=N",
            help="Signatures a role needs, e.g. root=2; repeatable (default 1).",
        ),
    ] = None,
    key_count: Annotated[
        list[str] | None,
        typer.Option(
            "--keys",
            metavar="ROLE=M",
            help="Keys made for a role (default: its threshold), e.g. root=3 for 2-of-3.",
        ),
    ] = None,
    json: Json = False,
) -> int:
    thresholds = _role_numbers(threshold or [], "--threshold")
    counts = _role_numbers(key_count or [], "--keys")
    if (data_dir / "trust" / "metadata" / "root.json").exists():
        raise ValueError(f"{data_dir / 'trust'} already has keys: use show or rotate")
    repo = _open(data_dir, root_keys, thresholds=thresholds, key_counts=counts)
    try:
        found = repo.keys()
    finally:
        repo.close()
    emit(found, json, _print_keys)
    _audit(data_dir, db, "signing_key.init", "trust", after=_summary(found))
    return 0


def show(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    db: Db = None,
    root_keys: RootKeys = None,
    json: Json = False,
) -> int:
    if not (data_dir / "trust" / "metadata" / "root.json").exists():
        raise ValueError(f"no keys in {data_dir / 'trust'}: edgefleet keys init")
    repo = _open(data_dir, root_keys, exclusive=False)  # reading only: fine beside a hub
    try:
        found = repo.keys()
    finally:
        repo.close()
    emit(found, json, render_keys)
    return 0


def rotate(
    role: Annotated[
        RoleName, typer.Argument(metavar="ROLE", help="The role whose keys are replaced.")
    ],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    db: Db = None,
    root_keys: RootKeys = None,
    threshold: Annotated[
        int | None, typer.Option("--threshold", help="New threshold (default: unchanged).")
    ] = None,
    key_count: Annotated[
        int | None, typer.Option("--keys", help="Keys to make (default: as many as now).")
    ] = None,
    token_keys: Annotated[
        list[str] | None,
        typer.Option(
            "--pkcs11",
            help="Use this key in a PKCS#11 token instead of making a key file (repeatable):"
            " pkcs11:token=..;object=..?pin-source=env:VAR|file:/path (docs/operations.md).",
        ),
    ] = None,
    json: Json = False,
) -> int:
    from hub.trust.token_signer import TokenSigner

    # a token that is missing or locked, or a key not there: refused before anything changes
    made = [TokenSigner.from_uri(uri) for uri in token_keys or []]
    repo = _open(data_dir, root_keys)
    try:
        before = repo.keys()
        version = repo.rotate(role, threshold=threshold, keys=made or key_count)
        after = repo.keys()
    finally:
        repo.close()
    if not json:
        print(f"rotated {role}: root is now version {version}, signed by the old root keys")
    emit(after, json, _print_keys)
    _audit(
        data_dir,
        db,
        "signing_key.rotate",
        role,
        before=_summary(before, role),
        after=_summary(after, role),
    )
    return 0


def renew_root(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    db: Db = None,
    root_keys: RootKeys = None,
    json: Json = False,
) -> int:
    repo = _open(data_dir, root_keys)
    try:
        before = repo.keys()["root"]
        version = repo.renew_root()
        expires = repo.root_expires().isoformat()
    finally:
        repo.close()
    said = {"version": version, "expires": expires}
    emit(said, json, lambda r: f"root version {r['version']}, expires {r['expires']}")
    _audit(
        data_dir,
        db,
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


def _audit(data_dir: Path, db: str | None, action: str, target: str, **change: Any) -> None:
    from edgefleet.local_audit import record

    command = f"edgefleet keys {action.rpartition('.')[2].replace('_', '-')}"
    record(data_dir, db, action, target, command, **change)


def _print_keys(found: dict[str, dict[str, Any]]) -> None:
    root = found["root"]
    print(f"root version {root['version']}, expires {root['expires']}")
    for role, info in found.items():
        ids = ", ".join(k[:12] for k in info["keyids"])
        print(
            f"  {role:<10} threshold {info['threshold']}  keys here "
            f"{info['keys_here']}/{len(info['keyids'])}  [{ids}]"
        )


def render_keys(found: dict[str, dict[str, Any]]) -> Any:
    """The roles as a table: threshold, keys on this disk, key ids (never key material)."""
    root = found["root"]
    rows = [
        (role, info["threshold"], f"{info['keys_here']}/{len(info['keyids'])}",
         ", ".join(k[:12] for k in info["keyids"]))
        for role, info in found.items()
    ]  # fmt: skip
    title = f"root version {root['version']}, expires {root['expires']}"
    return table(["role", "threshold>", "keys here>", "key ids"], rows, title=title)
