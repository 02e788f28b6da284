"""Helpers for tests that run the real `nebula` command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

NEBULA = Path(sys.executable).parent / "nebula"
START_TIMEOUT_S = 30.0


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


def clean_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without our own settings or colour, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEBULA_") or k.startswith("NEBULA_TEST_")
    }
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    env.update(NEBULA_ENV="local", NO_COLOR="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def cli_environment(data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    return clean_environment({"NEBULA_DATA_DIR": str(data_dir), **extra})


@dataclass
class Cli:
    """Runs `nebula ...` in `cwd` with its own data dir; stdin is always a pipe."""

    cwd: Path
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def environment(self, **extra: str) -> dict[str, str]:
        return cli_environment(self.data_dir, {**self.env, **extra})

    def __call__(
        self, *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(NEBULA), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=self.environment(**(env or {})),
            timeout=timeout,
            check=False,
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    stdout_path: Path
    stderr_path: Path

    def logs(self) -> str:
        return self.stdout_path.read_text("utf-8", "replace") + self.stderr_path.read_text(
            "utf-8", "replace"
        )

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


def start_server(cli: Cli, log_dir: Path, **env: str) -> Server:
    port = free_port()
    stdout_path, stderr_path = log_dir / "serve.stdout", log_dir / "serve.stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [str(NEBULA), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=cli.cwd,
            env=cli.environment(**env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    server = Server(process, f"http://127.0.0.1:{port}", stdout_path, stderr_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    with server.client() as client:
        while True:
            if process.poll() is not None:
                pytest.fail(f"nebula serve exited with {process.returncode}:\n{server.logs()}")
            try:
                if client.get("/healthz").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                stop_server(server)
                pytest.fail(f"nebula serve did not answer within {START_TIMEOUT_S}s")
            time.sleep(0.1)


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)
