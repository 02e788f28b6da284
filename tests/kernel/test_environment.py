"""Environment detection from host facts: NEBULA_ENV, Replit, Windows, Linode, Ubuntu, local."""

from __future__ import annotations

import sys

import pytest

from nebula.kernel.environment import (
    ENVIRONMENTS,
    HostFacts,
    detect_environment,
    read_host_facts,
)

UNKNOWN_HINT = "use one of linode, ubuntu-home, windows-vm, replit, local"


@pytest.mark.parametrize(
    ("env", "os_name", "dmi_vendor", "os_release_id", "expected", "reason_has"),
    [
        # NEBULA_ENV wins over every host signal.
        pytest.param(
            {"NEBULA_ENV": "linode"}, "win32", "", "", "linode", "NEBULA_ENV", id="override-win"
        ),
        pytest.param(
            {"NEBULA_ENV": "ubuntu-home", "REPL_ID": "r1"},
            "linux",
            "Akamai",
            "",
            "ubuntu-home",
            "NEBULA_ENV",
            id="override-beats-replit-and-dmi",
        ),
        pytest.param(
            {"NEBULA_ENV": " windows-vm \n"},
            "linux",
            "",
            "ubuntu",
            "windows-vm",
            "NEBULA_ENV",
            id="override-whitespace-stripped",
        ),
        pytest.param(
            {"NEBULA_ENV": "local"},
            "linux",
            "Linode",
            "",
            "local",
            "NEBULA_ENV",
            id="override-local",
        ),
        pytest.param(
            {"NEBULA_ENV": "replit"}, "darwin", "", "", "replit", "NEBULA_ENV", id="override-replit"
        ),
        # An unknown NEBULA_ENV falls back to local and says why (doctor reports it).
        pytest.param(
            {"NEBULA_ENV": "mars"},
            "linux",
            "Linode",
            "ubuntu",
            "local",
            "NEBULA_ENV='mars' is unknown",
            id="override-unknown",
        ),
        pytest.param(
            {"NEBULA_ENV": "Linode"},
            "linux",
            "",
            "",
            "local",
            "is unknown",
            id="override-is-case-sensitive",
        ),
        # An empty NEBULA_ENV is no override.
        pytest.param(
            {"NEBULA_ENV": "  "}, "win32", "", "", "windows-vm", "Windows", id="override-blank"
        ),
        # Replit.
        pytest.param({"REPL_ID": "abc-123"}, "linux", "", "", "replit", "REPL_ID", id="repl-id"),
        pytest.param(
            {"REPLIT_DB_URL": "https://kv.replit.com/v0/x"},
            "linux",
            "",
            "ubuntu",
            "replit",
            "REPL_ID",
            id="replit-db-url",
        ),
        pytest.param(
            {"REPL_ID": "abc"}, "win32", "Linode", "", "replit", "REPL_ID", id="replit-beats-win"
        ),
        pytest.param({"REPL_ID": ""}, "linux", "", "", "local", "no specific", id="repl-id-empty"),
        # Windows.
        pytest.param({}, "win32", "", "", "windows-vm", "Windows", id="win32"),
        pytest.param({}, "win32", "Linode", "", "windows-vm", "Windows", id="win-beats-dmi"),
        # Linode / Akamai DMI vendor.
        pytest.param({}, "linux", "Linode", "", "linode", "Linode", id="dmi-linode"),
        pytest.param({}, "linux", "Akamai Technologies", "", "linode", "Akamai", id="dmi-akamai"),
        pytest.param({}, "linux", "AKAMAI", "ubuntu", "linode", "AKAMAI", id="dmi-beats-ubuntu"),
        pytest.param(
            {}, "linux", "QEMU linode-board", "debian", "linode", "DMI", id="dmi-board-vendor"
        ),
        # Ubuntu without a cloud vendor.
        pytest.param({}, "linux", "", "ubuntu", "ubuntu-home", "Ubuntu", id="ubuntu"),
        pytest.param(
            {}, "linux", "Dell Inc.", "ubuntu", "ubuntu-home", "Ubuntu", id="ubuntu-on-dell"
        ),
        # Everything else is local.
        pytest.param({}, "linux", "", "debian", "local", "no specific signal", id="debian"),
        pytest.param({}, "linux", "QEMU", "", "local", "no specific signal", id="plain-vm"),
        pytest.param({}, "darwin", "", "", "local", "no specific signal", id="mac"),
        pytest.param(
            {}, "darwin", "", "ubuntu", "local", "no specific signal", id="ubuntu-only-on-linux"
        ),
        pytest.param(
            {"HOME": "/home/x", "PATH": "/usr/bin"},
            "linux",
            "",
            "",
            "local",
            "no specific signal",
            id="unrelated-vars",
        ),
    ],
)
def test_detect_environment_table(
    env: dict[str, str],
    os_name: str,
    dmi_vendor: str,
    os_release_id: str,
    expected: str,
    reason_has: str,
) -> None:
    detection = detect_environment(
        HostFacts(env=env, os_name=os_name, dmi_vendor=dmi_vendor, os_release_id=os_release_id)
    )
    assert detection.name == expected
    assert detection.name in ENVIRONMENTS
    assert reason_has in detection.reason


def test_unknown_override_lists_the_valid_names() -> None:
    detection = detect_environment(HostFacts(env={"NEBULA_ENV": "prod"}, os_name="linux"))
    assert UNKNOWN_HINT in detection.reason


def test_environment_names() -> None:
    assert set(ENVIRONMENTS) == {"linode", "ubuntu-home", "windows-vm", "replit", "local"}


def test_read_host_facts_reflects_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEBULA_ENV", "replit")
    facts = read_host_facts()
    assert facts.os_name == sys.platform
    assert facts.env["NEBULA_ENV"] == "replit"
    assert facts.os_release_id == facts.os_release_id.lower()
    assert detect_environment(facts).name == "replit"


def test_local_reason_describes_the_given_facts_not_the_test_host() -> None:
    detection = detect_environment(HostFacts(env={}, os_name="freebsd14"))
    assert detection.name == "local"
    assert "freebsd14" in detection.reason
