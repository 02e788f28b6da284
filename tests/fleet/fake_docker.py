"""A stand-in for the docker CLI, installed as `docker` on the test SSH server's PATH.

It answers `ps`, `stats`, `start`, `stop`, `restart`, `rm` and `logs` with output shaped
like the real CLI's (`--format '{{json .}}'` lines, docker's error texts and exit
codes), keeps its containers in the JSON file named by FAKE_DOCKER_STATE, and appends
every argv it was given to FAKE_DOCKER_STATE + ".calls".
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

PS_FLAGS = ["-a", "--no-trunc", "--format", "{{json .}}"]
STATS_FLAGS = ["--no-stream", "--no-trunc", "--format", "{{json .}}"]
DAEMON_DOWN = (
    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
    "Is the docker daemon running?"
)


def main(args: list[str]) -> int:
    state_path = Path(os.environ["FAKE_DOCKER_STATE"])
    with open(f"{state_path}.calls", "a", encoding="utf-8") as calls:
        calls.write(json.dumps(args) + "\n")
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if state.get("daemon") == "down":
        return fail(DAEMON_DOWN)
    if not args:
        return fail("docker: 'docker' requires a command.", 1)
    command, rest = args[0], args[1:]
    if command == "ps":
        return ps(state, rest)
    if command == "stats":
        return stats(state, rest)
    if command in {"start", "stop", "restart", "rm"}:
        code = act(state, command, rest)
        state_path.write_text(json.dumps(state), encoding="utf-8")
        return code
    if command == "logs":
        return logs(state, rest)
    return fail(f"docker: unknown command: docker {command}", 1)


def fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr)
    return code


def ps(state: dict[str, Any], flags: list[str]) -> int:
    if flags != PS_FLAGS:
        return fail(f"unknown flag: {flags}", 125)
    for box in state["containers"]:
        row = {
            "Command": "\"/docker-entrypoint.sh nginx -g 'daemon off;'\"",
            "CreatedAt": box["created_at"],
            "ID": box["id"],
            "Image": box["image"],
            "Labels": "",
            "LocalVolumes": "0",
            "Mounts": "",
            "Names": box.get("names", box["name"]),
            "Networks": "bridge",
            "Ports": box.get("ports", ""),
            "RunningFor": "2 hours ago",
            "Size": "0B",
            "Status": box["status"],
        }
        if not box.get("old_cli"):  # docker before 20.10 printed no State column
            row["State"] = box["state"]
        print(json.dumps(row))
    return 0


def stats(state: dict[str, Any], flags: list[str]) -> int:
    if flags != STATS_FLAGS:
        return fail(f"unknown flag: {flags}", 125)
    for box in state["containers"]:
        if box["state"] != "running":
            continue
        figures = box.get("stats", {})
        row = {
            "BlockIO": "0B / 0B",
            "CPUPerc": figures.get("CPUPerc", "0.00%"),
            "Container": box["id"],
            "ID": box["id"],
            "MemPerc": figures.get("MemPerc", "0.00%"),
            "MemUsage": figures.get("MemUsage", "0B / 0B"),
            "Name": box["name"],
            "NetIO": "0B / 0B",
            "PIDs": "1",
        }
        print(json.dumps(row))
    return 0


def find(state: dict[str, Any], ref: str) -> dict[str, Any] | None:
    for box in state["containers"]:
        if ref in (box["name"], box["id"]) or box["id"].startswith(ref):
            return box
    return None


def act(state: dict[str, Any], command: str, rest: list[str]) -> int:
    refs = rest[1:] if rest[:1] == ["--"] else rest
    if len(refs) != 1 or refs[0].startswith("-"):
        return fail(f"unknown flag or arguments: {rest}", 125)
    ref = refs[0]
    box = find(state, ref)
    if box is None:
        return fail(f"Error response from daemon: No such container: {ref}")
    if command in {"start", "restart"}:
        box["state"], box["status"] = "running", "Up Less than a second"
    elif command == "stop":
        box["state"], box["status"] = "exited", "Exited (0) Less than a second ago"
    elif box["state"] == "running":
        return fail(
            f'Error response from daemon: cannot remove container "/{box["name"]}": '
            "container is running: stop the container before removing or force remove"
        )
    else:
        state["containers"].remove(box)
    print(ref)
    return 0


def logs(state: dict[str, Any], rest: list[str]) -> int:
    if len(rest) != 5 or rest[0] != "--tail" or rest[2:4] != ["--timestamps", "--"]:
        return fail(f"unknown flag or arguments: {rest}", 125)
    box = find(state, rest[4])
    if box is None:
        return fail(f"Error response from daemon: No such container: {rest[4]}")
    for stream, line in box.get("logs", [])[-int(rest[1]) :]:
        print(line, file=sys.stderr if stream == "stderr" else sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
