"""Whether this run is CI, and what a test does about a missing real service."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def need_service(variable: str, what: str) -> str:
    """The URL of a real service for this test, or a skip (a failure under CI=true)."""
    url = os.environ.get(variable)
    if url:
        return url
    message = f"{what} tests need {variable} (see .ci/run)"
    if IN_CI:
        pytest.fail(f"{message}; it must be set when CI=true")
    pytest.skip(message)
