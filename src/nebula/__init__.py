"""Nebula Command: one control plane for a homelab, a Discord community and live streams."""

from __future__ import annotations

from functools import cache


@cache
def _installed_version() -> str:
    # Looked up on first use: importlib.metadata costs the small node agent 2 MB.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nebula-command")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+source"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module 'nebula' has no attribute {name!r}")
