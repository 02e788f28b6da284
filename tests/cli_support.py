"""Helpers for tests that run the real `nebula` command."""

from __future__ import annotations

import subprocess


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{result.args} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stdout + result.stderr, describe(result)
    return result


def failed_cleanly(result: subprocess.CompletedProcess[str]) -> str:
    """Non-zero exit, nothing on stdout, exactly one `error:` line on stderr, no traceback."""
    text = describe(result)
    assert result.returncode != 0, text
    assert "Traceback" not in result.stdout + result.stderr, text
    assert result.stdout == "", text
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("error: "), text
    return lines[0]
