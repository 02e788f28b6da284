"""Nebula Command: one control plane for a homelab, a Discord community and live streams."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nebula-command")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
