"""The dashboard and JSON API."""

from __future__ import annotations

from nebula.web.app import create_app

__all__ = ["create_app"]
