"""The command line: global options on either side of the command; read commands that print
only what was asked for, and say what to do when the database is not set up."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from collector.cli import _parser

from .test_admin_commands import cli

RUN = str(uuid.uuid4())
COMMANDS = [["serve"], ["ui"], ["prune", "--older-than", "30d"], ["keys", "somewhere"],
            ["migrate"], ["downgrade"], ["runs"], ["tree", RUN], ["events", RUN],
            ["export", RUN, "--otlp", "http://127.0.0.1:1/v1/traces"]]
GLOBAL = ["--dsn", "postgresql://db/x", "--schema", "other", "--data-dir", "/tmp/d", "-v",
          "--log-json"]
GIVEN = {"dsn": "postgresql://db/x", "schema": "other", "data_dir": Path("/tmp/d"),
         "verbose": True, "log_json": True}
UNSET = {"dsn": None, "schema": None, "data_dir": None, "verbose": False, "log_json": False}


def _globals(argv: list[str]) -> dict[str, object]:
    args = _parser().parse_args(argv)
    return {name: getattr(args, name) for name in GIVEN}


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_global_options_go_before_or_after_the_command(command: list[str]) -> None:
    assert _globals([*GLOBAL, *command]) == GIVEN
    assert _globals([*command, *GLOBAL]) == GIVEN
    assert _globals(command) == UNSET
    # Given on both sides: the one after the command wins; the others keep what came first.
    assert _globals(["--dsn", "postgresql://db/first", "-v", *command, "--dsn",
                     "postgresql://db/x"]) == {**UNSET, "dsn": "postgresql://db/x",
                                               "verbose": True}


def test_read_commands_print_only_their_output(database: str) -> None:
    for command in (["runs"], ["runs", "--json"]):
        result = cli(*command, "--dsn", database)
        assert (result.returncode, result.stderr) == (0, ""), result
    assert cli("runs", "--json", "--dsn", database).stdout.strip() == "[]"


def test_read_commands_on_a_database_not_set_up_say_what_to_do(empty_database: str) -> None:
    result = cli("runs", "--dsn", empty_database)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert result.stderr.strip() == (
        "cmbagent-collector: the database has no tracking tables in schema 'cmbagent_tracking': "
        "run `cmbagent-collector migrate` (or start `serve` once), or pass the --schema they "
        "are in")
