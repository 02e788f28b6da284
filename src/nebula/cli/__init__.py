"""The `nebula` command line."""

from __future__ import annotations

from nebula.cli.main import app, main

__all__ = ["app", "main"]
