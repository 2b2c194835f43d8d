"""``edgefleet hub serve --replicas N``: each replica's command line, and what is refused
before anything starts (edgefleet/hub_replicas.py, edgefleet/hub_cli.py)."""

from __future__ import annotations

import pytest

from edgefleet.cli import main
from edgefleet.hub_replicas import replica_argv


def test_each_replica_gets_the_command_line_with_its_index_and_port() -> None:
    argv = ["hub", "serve", "--data", "d", "--replicas", "3", "--port=8700", "--db", "pg"]
    assert replica_argv(argv, 2, 8702) == [
        *["hub", "serve", "--data", "d", "--db", "pg"],
        *["--replica", "2", "--port", "8702"],
    ]
    assert replica_argv(["hub", "serve", "--replicas=2", "--port", "9"], 0, 10) == [
        *["hub", "serve", "--replica", "0", "--port", "10"]
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["--broker", "mqtt://127.0.0.1:1883"],  # no database: SQLite is one process's
        ["--db", "sqlite:///x.db", "--broker", "mqtt://127.0.0.1:1883"],
        ["--db", "postgresql+psycopg://postgres@127.0.0.1/test"],  # no shared broker
    ],
)
def test_replicas_need_postgresql_and_a_broker(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hub", "serve", "--replicas", "2", *args]) == 2
    err = capsys.readouterr().err
    assert "--replicas needs --db postgresql+psycopg://... and --broker URL" in err
