"""Where files that ship beside the code live, for a source checkout and for a wheel."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/nebula
_SOURCE_ROOT = _PACKAGE_DIR.parent.parent  # the checkout, when running from source


def _first_existing(*candidates: Path) -> Path:
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[-1]


def migrations_dir() -> Path:
    """Alembic scripts: `migrations/` in a checkout, `nebula/_migrations` in a wheel."""
    return _first_existing(_PACKAGE_DIR / "_migrations", _SOURCE_ROOT / "migrations")


def environments_dir() -> Path:
    """Per-environment YAML files; `NEBULA_CONFIG_DIR` points elsewhere when set."""
    override = os.environ.get("NEBULA_CONFIG_DIR")
    if override:
        return Path(override)
    return _first_existing(_PACKAGE_DIR / "_environments", _SOURCE_ROOT / "config" / "environments")


def default_data_dir() -> Path:
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "nebula"
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "nebula"
