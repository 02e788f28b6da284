"""The `nebula` command line.

`nebula agent ...` goes straight to the agent's commands: the node agent runs on
every machine and must not load the dashboard's modules (database, web framework)
that the rest of the CLI imports. `nebula agent run` with well-formed options does
not even load Typer (see `nebula.agent.app.parse_run_args`).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    if sys.argv[1:3] == ["agent", "run"]:
        from nebula.agent.app import parse_run_args, start

        parsed = parse_run_args(sys.argv[3:])
        if parsed is not None:  # else the full agent CLI explains what is wrong
            sys.exit(start(*parsed))
    if sys.argv[1:2] == ["agent"]:
        from nebula.cli.agent import agent_app

        agent_app(args=sys.argv[2:], prog_name="nebula agent")
        return
    from nebula.cli.main import main as full_main

    full_main()


def __getattr__(name: str) -> Any:
    if name == "app":  # the full Typer app, loaded only when asked for
        from nebula.cli.main import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
