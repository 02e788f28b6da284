"""Which kind of machine is this? Detected from facts the host exposes, never the network."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

EnvironmentName = Literal["linode", "ubuntu-home", "windows-vm", "replit", "local"]
ENVIRONMENTS: Final[tuple[str, ...]] = get_args(EnvironmentName)

_DMI_DIR: Final = Path("/sys/class/dmi/id")
_OS_RELEASE: Final = Path("/etc/os-release")


@dataclass(frozen=True)
class HostFacts:
    """What detection looks at; built from the real host by `read_host_facts`."""

    env: Mapping[str, str]
    os_name: str  # sys.platform: "linux", "win32", "darwin"
    dmi_vendor: str = ""  # /sys/class/dmi/id/sys_vendor or board_vendor
    os_release_id: str = ""  # ID= from /etc/os-release


@dataclass(frozen=True)
class Detection:
    name: str
    reason: str


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _os_release_id(text: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ID":
            return value.strip().strip('"').lower()
    return ""


def read_host_facts() -> HostFacts:
    vendor = " ".join(
        filter(None, (_read_text(_DMI_DIR / name) for name in ("sys_vendor", "board_vendor")))
    )
    return HostFacts(
        env=dict(os.environ),
        os_name=sys.platform,
        dmi_vendor=vendor,
        os_release_id=_os_release_id(_read_text(_OS_RELEASE)),
    )


def detect_environment(facts: HostFacts) -> Detection:
    """Pick the environment. `NEBULA_ENV` wins; then the strongest host signal."""
    override = facts.env.get("NEBULA_ENV", "").strip()
    if override:
        if override not in ENVIRONMENTS:
            choices = ", ".join(ENVIRONMENTS)
            return Detection("local", f"NEBULA_ENV={override!r} is unknown (use one of {choices})")
        return Detection(override, "NEBULA_ENV is set")
    if facts.env.get("REPL_ID") or facts.env.get("REPLIT_DB_URL"):
        return Detection("replit", "REPL_ID is set")
    if facts.os_name.startswith("win"):
        return Detection("windows-vm", "running on Windows")
    if "linode" in facts.dmi_vendor.lower() or "akamai" in facts.dmi_vendor.lower():
        return Detection("linode", f"DMI vendor is {facts.dmi_vendor!r}")
    if facts.os_name.startswith("linux") and facts.os_release_id == "ubuntu":
        return Detection("ubuntu-home", "Ubuntu host with no cloud vendor in DMI")
    return Detection("local", f"no specific signal ({facts.os_name})")
