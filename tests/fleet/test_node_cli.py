"""`nebula node ...` as a user types it: clean one-line errors, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_support import Cli, failed_cleanly, succeeded


@pytest.fixture
def nebula(tmp_path: Path) -> Cli:
    return Cli(tmp_path, tmp_path / "data")


def test_add_prints_the_token_last_and_refuses_a_second_node_of_that_name(nebula: Cli) -> None:
    added = succeeded(nebula("node", "add", "n1", "--environment", "ubuntu-home"))
    assert added.stdout.strip().splitlines()[-1].startswith("nbe_")
    error = failed_cleanly(nebula("node", "add", "n1"))
    assert "already exists" in error
    assert "--reissue" in error
    fresh = succeeded(nebula("node", "add", "n1", "--reissue", "--json"))
    assert json.loads(fresh.stdout)["enrollment_token"].startswith("nbe_")
    listed = json.loads(succeeded(nebula("node", "list", "--json")).stdout)
    assert [(n["name"], n["environment"], n["status"]) for n in listed] == [
        ("n1", "ubuntu-home", "pending")
    ]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["node", "add", "Bad_Name"], "lower-case letters"),
        (["node", "add", "n2", "--environment", "mars"], "use one of"),
        (["node", "add", "n2", "--mac", "zz:zz"], "not a MAC address"),
        (["node", "add", "n2", "--expires", "soon"], "duration"),
        (["node", "show", "ghost"], "No node named 'ghost'"),
        (["node", "exec", "ghost", "restart"], "No node named 'ghost'"),
        (["node", "exec", "ghost", "restart", "--param", "novalue"], "KEY=VALUE"),
        (["node", "set-ssh-key", "ghost", "/no/such/key"], "Cannot read"),
        (["node", "import", "/no/such/map.yml"], "Cannot read"),
        (["node", "rotate-tokens", "ghost"], "No node named 'ghost'"),
    ],
)
def test_bad_input_is_one_clear_line(nebula: Cli, args: list[str], problem: str) -> None:
    assert problem in failed_cleanly(nebula(*args))
    assert json.loads(succeeded(nebula("node", "list", "--json")).stdout) == []


def test_wake_without_a_mac_says_how_to_add_one(nebula: Cli) -> None:
    succeeded(nebula("node", "add", "vm", "--kind", "ssh"))
    error = failed_cleanly(nebula("node", "wake", "vm"))
    assert "no MAC address" in error
    assert "wake:" in error
