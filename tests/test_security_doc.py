"""docs/security.md names a test for every threat, so the page cannot drift from what is
shown:

- every test it names (``test_x``, ``tests/file.py::test_x``, ``::test_x`` after a named
  file, ``tests/file.py``) is a real test function of the file it names, or of the file the
  table's header names, or (named nowhere) of exactly one test file;
- every ``test_attack_is_refused[<id>]`` it names, in full or abbreviated (``[…: x]`` is
  the previous full id's prefix with ``: x``; ``[x]`` is the id ``x`` of the same test),
  is a row of ATTACKS in tests/test_attacks.py;
- every row of ATTACKS is named in a table with a ``reported`` column, and the stage and
  reason that column gives (``failed`` / ``chunk_hash_mismatch``) are the ones the row
  asserts.

The checks are functions of the page's text; the tests at the end run them on broken
copies of the page too, so a check that quietly passes everything would show.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from test_attacks import ATTACKS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"
ATTACK_TEST = ("test_attacks.py", "test_attack_is_refused")  # the table-driven attack test
ATTACK_TABLES = ("Update attacks", "Commands (the director)")  # sections, with `reported`
EXPECTED = {a.name: (a.stage, a.reason.value) for a in ATTACKS}

SPAN = re.compile(r"`([^`]*)`")
REF = re.compile(
    r"(?P<file>tests/[\w/.-]+\.py)?(?P<colons>::)?(?P<name>test_\w+)?(?:\[(?P<param>[^\]]+)\])?"
)
REPORTED = re.compile(r"`(\w+)` / `(\w+)`")
ELLIPSIS = ("…: ", "...: ")
PLACEHOLDER = re.compile(r"<[\w -]+>")  # `[<row>]` in prose stands for any row


@cache
def known_tests() -> dict[str, frozenset[str]]:
    """Test function names per test file (module level: this project has no test classes)."""
    out: dict[str, frozenset[str]] = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        out[path.name] = frozenset(
            n.name
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
        )
    return out


# --------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class Table:
    section: str  # the "## " heading it is under
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> int | None:
        """The index of the first column whose header starts with ``name``."""
        for i, cell in enumerate(self.header):
            if cell.lower().startswith(name):
                return i
        return None


@dataclass(frozen=True)
class Ref:
    file: str | None  # tests/x.py file name it resolves to; None: no file says which
    name: str | None  # test function; None: the ref names a file only
    param: str | None  # parametrize id, expanded from the abbreviated forms
    where: str  # for messages

    def __str__(self) -> str:
        out = "::".join(p for p in (self.file, self.name) if p)
        return out + (f"[{self.param}]" if self.param is not None else "")


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(text: str) -> list[Table]:
    out: list[Table] = []
    section = ""
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            out.append(Table(section, cells(block[0]), [cells(r) for r in block[2:]]))
            block = []
        if line.startswith("## "):
            section = line[3:].strip()
    return out


def prose(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("|"))


def header_file(table: Table) -> str | None:
    """The file a table's header names for its bare test names (`... (`tests/x.py`)`)."""
    col = table.column("test")
    if col is None:
        return None
    found = re.search(r"`(tests/[\w/.-]+\.py)`", table.header[col])
    return found.group(1) if found else None


def resolve(
    span: str, default_file: str | None, context: dict[str, str | None], where: str, strict: bool
) -> tuple[Ref | None, list[str]]:
    """One backticked span as a test reference. ``context`` carries, within one cell, the
    last named file (for ``::test_x``) and the last full parametrized test and id (for the
    abbreviated ``[x]`` forms). ``strict``: the span is in a test column, so it must be a
    reference; elsewhere spans naming a test or a test file are, and must parse."""
    m = REF.fullmatch(span)
    if m is None or not span:
        if strict or "test_" in span:
            return None, [f"{where}: `{span}` is not a test reference"]
        return None, []
    file, colons, name, param = m.group("file", "colons", "name", "param")
    if not strict and not (file or name):
        return None, []
    if file and not colons and not name and not param:  # tests/x.py
        context["file"] = file
        return Ref(file, None, None, where), []
    if not file and not colons and not name and param:  # [x] or […: x]
        if context["test"] is None:
            return None, [f"{where}: `{span}` follows no full parametrized test in its cell"]
        if param.startswith(ELLIPSIS):
            last = context["param"] or ""
            prefix, sep, _ = last.partition(": ")
            if not sep:
                return None, [f"{where}: `{span}`: the previous id `{last}` has no prefix"]
            param = f"{prefix}: {param.partition(': ')[2]}"
        test_file, _, test_name = context["test"].partition("::")
        return Ref(test_file or None, test_name, param, where), []
    if not name or (file and not colons):  # tests/x.py[p], tests/x.pytest_y
        return None, [f"{where}: `{span}` is not a test reference"]
    if colons:  # tests/x.py::test_y or ::test_y
        file = file or context["file"]
        if file is None:
            return None, [f"{where}: `{span}` follows no named file in its cell"]
        context["file"] = file
    else:  # test_y: the table header's file, if it names one
        file = default_file
    if param is not None:
        context["test"], context["param"] = f"{file or ''}::{name}", param
    return Ref(file, name, param, where), []


def references(text: str) -> tuple[list[tuple[Ref, Table | None, list[str] | None]], list[str]]:
    """Every test reference on the page with the table and row it is in (None: prose), and
    the spans that do not parse."""
    out: list[tuple[Ref, Table | None, list[str] | None]] = []
    problems: list[str] = []
    for table in tables(text):
        col = table.column("test")
        default = header_file(table)
        for i, cell in enumerate(table.header):  # a header names files, not tests
            for span in SPAN.findall(cell):
                context: dict[str, str | None] = {"file": None, "test": None, "param": None}
                ref, bad = resolve(span, None, context, f"{table.section} header", i == col)
                problems += bad
                if ref is not None:
                    out.append((ref, None, None))
        for row in table.rows:
            where = f"{table.section} | {row[0]} | {row[1][:40]}"
            if len(row) != len(table.header):
                problems.append(f"{where}: {len(row)} cells, the header has {len(table.header)}")
                continue
            for i, cell in enumerate(row):
                context = {"file": None, "test": None, "param": None}
                for span in SPAN.findall(cell):
                    ref, bad = resolve(span, default, context, where, i == col)
                    problems += bad
                    if ref is not None:
                        out.append((ref, table, row))
    for span in SPAN.findall(prose(text)):
        context = {"file": None, "test": None, "param": None}
        ref, bad = resolve(span, None, context, "prose", False)
        problems += bad
        if ref is not None:
            out.append((ref, None, None))
    return out, problems


# --------------------------------------------------------------------------- the checks


def reference_problems(text: str) -> tuple[int, list[str]]:
    """How many test references the page makes, and those naming no real test or row."""
    known = known_tests()
    refs, problems = references(text)
    attack_ids = set(EXPECTED)
    for ref, table, _ in refs:
        label = f"{ref.where}: {ref}"
        if ref.file is not None and not (ROOT / ref.file).is_file():
            problems.append(f"{label}: no such file")
            continue
        file = Path(ref.file).name if ref.file else None
        if file is not None and file not in known:
            problems.append(f"{label}: not a test file")
            continue
        if ref.name is None:
            continue
        if file is not None:
            if ref.name not in known[file]:
                problems.append(f"{label}: {file} has no test function {ref.name}")
                continue
        else:
            holders = sorted(f for f, names in known.items() if ref.name in names)
            if len(holders) != 1:
                problems.append(f"{label}: names {holders or 'no test'}")
                continue
            file = holders[0]
        if ref.param is None:
            continue
        if (file, ref.name) != ATTACK_TEST:
            problems.append(f"{label}: only ids of {'::'.join(ATTACK_TEST)} can be checked")
        elif PLACEHOLDER.fullmatch(ref.param):
            if table is not None:
                problems.append(f"{label}: a placeholder, not a row, in a table")
        elif ref.param not in attack_ids:
            problems.append(f"{label}: no ATTACKS row has the id {ref.param!r}")
    return len(refs), problems


def attack_rows(text: str) -> list[tuple[str, str, Table, list[str]]]:
    """(attack id, the row's reported cell, table, row) for each attack id named in a
    table with a ``reported`` column."""
    out = []
    for ref, table, row in references(text)[0]:
        if table is None or row is None or ref.param is None or ref.name != ATTACK_TEST[1]:
            continue
        col = table.column("reported")
        if col is not None:
            out.append((ref.param, row[col], table, row))
    return out


def reported_problems(text: str) -> list[str]:
    """Rows whose reported stage / reason differ from what their ATTACKS row asserts."""
    problems = []
    sections = {t.section for t in tables(text) if t.column("reported") is not None}
    missing = [s for s in ATTACK_TABLES if s not in sections]
    problems += [f"no {s!r} table with a reported column" for s in missing]
    for attack, reported, table, row in attack_rows(text):
        if attack not in EXPECTED:
            continue  # reference_problems reports it
        expected = "`{}` / `{}`".format(*EXPECTED[attack])
        m = REPORTED.fullmatch(reported)
        if m is None or m.groups() != EXPECTED[attack]:
            problems.append(
                f"{table.section} | {row[0]} | {row[1][:40]}: [{attack}] reported as "
                f"{reported!r}, test_attacks.py expects {expected}"
            )
    return problems


def unlisted_attacks(text: str) -> list[str]:
    """ATTACKS rows the page does not name in a table with their reported outcome."""
    named = {attack for attack, _, _, _ in attack_rows(text)}
    return [a.name for a in ATTACKS if a.name not in named]


def all_problems(text: str) -> list[str]:
    return [*reference_problems(text)[1], *reported_problems(text), *unlisted_attacks(text)]


# --------------------------------------------------------------------------- the page's tests


def test_attack_ids_are_unique() -> None:
    assert len(EXPECTED) == len(ATTACKS)


def test_every_test_the_security_page_names_exists() -> None:
    named, problems = reference_problems(DOC.read_text())
    assert not problems, "\n".join(problems)
    assert named >= 50  # the page's tables, not an empty file, were checked


def test_every_reported_outcome_is_what_the_attack_test_asserts() -> None:
    text = DOC.read_text()
    problems = reported_problems(text)
    assert not problems, "\n".join(problems)
    compared = {table.section for _, _, table, _ in attack_rows(text)}
    assert compared >= set(ATTACK_TABLES), compared  # rows of both tables were compared


def test_every_attack_row_is_on_the_security_page() -> None:
    missing = unlisted_attacks(DOC.read_text())
    assert not missing, f"ATTACKS rows not in docs/security.md's attack tables: {missing}"


# --------------------------------------------------------------------------- broken pages


def row_naming(text: str, attack: str) -> str:
    """The table line of the page that names ``attack`` in full."""
    lines = [line for line in text.splitlines() if line.startswith("|") and f"[{attack}]" in line]
    assert lines, f"the page names no [{attack}]: pick another example"
    return lines[0]


def replace_once(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is not on the page any more: pick another example"
    return text.replace(old, new, 1)


def set_reported(attack: str, reported: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        line = row_naming(text, attack)
        table = next(t for t in tables(text) if cells(line) in t.rows)
        row = cells(line)
        col = table.column("reported")
        assert col is not None
        row[col] = reported
        return replace_once(text, line, "| " + " | ".join(row) + " |")

    return edit


def drop_row(attack: str) -> Callable[[str], str]:
    return lambda text: replace_once(text, row_naming(text, attack) + "\n", "")


def other_reason(attack: str) -> str:
    stage, reason = EXPECTED[attack]
    return f"`{stage}` / `{next(r for r in EXPECTED.values() if r[1] != reason)[1]}`"


def other_stage(attack: str) -> str:
    stage, reason = EXPECTED[attack]
    return f"`{'failed' if stage != 'failed' else 'refused'}` / `{reason}`"


# ATTACKS rows the page names, to break (an example gone from ATTACKS fails here)
FIRST, DIRECTOR, DROP = (
    "arbitrary software: tampered model file",
    "director: unsigned command",
    "drop-request",
)
assert {FIRST, DIRECTOR, DROP} <= set(EXPECTED)

BROKEN: dict[str, tuple[Callable[[str], str], str]] = {  # edit, what the problem names
    "reason swapped": (set_reported(FIRST, other_reason(FIRST)), FIRST),
    "stage swapped": (set_reported(DIRECTOR, other_stage(DIRECTOR)), DIRECTOR),
    "reported in words": (set_reported(DROP, "refused"), DROP),
    "reason on its own": (set_reported(FIRST, f"`{EXPECTED[FIRST][1]}`"), FIRST),
    "attack row dropped": (drop_row(FIRST), FIRST),
    # the old check let any "director: ..." row go while the word "director" was on the page
    "director row dropped": (drop_row(DIRECTOR), DIRECTOR),
    "abbreviated id dropped": (
        lambda t: replace_once(t, ", `[…: targets]`", ""),
        "indefinite freeze: targets",
    ),
    "abbreviated id misspelt": (
        lambda t: replace_once(t, "`[…: snapshot]`", "`[…: snapshots]`"),
        "indefinite freeze: snapshots",
    ),
    "abbreviated id first in its cell": (
        lambda t: replace_once(
            t, "`test_attack_is_refused[indefinite freeze: timestamp]`, ", "`[…: timestamp]`, "
        ),
        "follows no full parametrized test",
    ),
    "short id misspelt": (
        lambda t: replace_once(
            t, "`[rollback outside local history]`", "`[rollback outside history]`"
        ),
        "rollback outside history",
    ),
    "full id misspelt": (
        lambda t: replace_once(t, "[fast-forward]`", "[fast forward]`"),
        "fast forward",
    ),
    "no test_ prefix": (
        lambda t: replace_once(
            t, "`test_attack_is_refused[fast-forward]`", "`attack_is_refused[fast-forward]`"
        ),
        "not a test reference",
    ),
    "bare test renamed": (
        lambda t: replace_once(t, "test_drop_request_backs_off_between_retries", "test_drop_x"),
        "test_drop_x",
    ),
    "test in another file": (
        lambda t: replace_once(
            t, "`tests/test_trust.py::test_verify_file`", "`tests/test_pki.py::test_verify_file`"
        ),
        "test_pki.py has no test function test_verify_file",
    ),
    "bare test not in the header's file": (
        lambda t: replace_once(
            t,
            "`test_revoked_device_cannot_reconnect_and_the_fleet_stays`, "
            "`tests/test_enrolment.py::test_enrol_connect_install_revoke_reenrol`",
            "`test_revoked_device_cannot_reconnect_and_the_fleet_stays`, "
            "`test_enrol_connect_install_revoke_reenrol`",
        ),
        "test_broker_security.py has no test function test_enrol_connect_install_revoke_reenrol",
    ),
    "header names another file": (
        lambda t: replace_once(
            t, "| test (`tests/test_api_auth.py`) |", "| test (`tests/test_pki.py`) |"
        ),
        "test_pki.py has no test function test_unusable_keys_get_401",
    ),
    "::test without a file": (
        lambda t: replace_once(
            t,
            "`tests/test_broker_security.py::test_plain_tcp_refused_on_tls_listener`, `::",
            "`test_plain_tcp_refused_on_tls_listener`, `::",
        ),
        "follows no named file",
    ),
    "::test not in the named file": (
        lambda t: replace_once(
            t, "`::test_payload_and_topic_are_encrypted_on_the_wire`", "`::test_verify_file`"
        ),
        "test_broker_security.py has no test function test_verify_file",
    ),
    "file in prose missing": (
        lambda t: replace_once(t, "`tests/test_keys.py`", "`tests/test_keyz.py`"),
        "tests/test_keyz.py: no such file",
    ),
    "test in prose renamed": (
        lambda t: replace_once(
            t,
            "`tests/test_attacks.py::test_attack_is_refused[<row>]`",
            "`tests/test_attacks.py::test_attack_refused[<row>]`",
        ),
        "has no test function test_attack_refused",
    ),
    "test in prose without its path": (
        lambda t: replace_once(t, "`tests/test_keys.py`", "`test_keys.py`"),
        "`test_keys.py` is not a test reference",
    ),
    "attack table's section renamed": (
        lambda t: replace_once(t, "## Commands (the director)", "## Commands"),
        "no 'Commands (the director)' table",
    ),
}


@pytest.mark.parametrize("broken", BROKEN)
def test_a_broken_page_fails_the_checks(broken: str) -> None:
    edit, named = BROKEN[broken]
    text = DOC.read_text()
    before = set(all_problems(text))
    new = [p for p in all_problems(edit(text)) if p not in before]
    assert any(named in p for p in new), new
