"""`nebula agent ...`: the node agent on this machine.

Kept apart from the rest of the CLI: `nebula agent` is dispatched here without
loading the dashboard's modules (database, web framework), so the agent stays small.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from nebula.agent.config import AgentConfig, load_config
from nebula.agent.errors import AgentError

agent_app = typer.Typer(
    help="The node agent: enroll this machine, run the agent, show its state.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Agent config file (TOML). Default: $NEBULA_DATA_DIR/agent.toml, if it exists.",
        dir_okay=False,
    ),
]


def fail(message: str, hint: str | None = None) -> NoReturn:
    # One line, so service logs and scripts see the whole story together.
    print(f"error: {message}" + (f" ({hint})" if hint else ""), file=sys.stderr)
    raise typer.Exit(1)


def load(path: Path | None) -> AgentConfig:
    try:
        return load_config(path)
    except AgentError as err:
        fail(err.message, err.hint)


@agent_app.command()
def run(
    host: Annotated[str | None, typer.Option(help="Address to listen on [0.0.0.0].")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on [9765].", min=1, max=65535)
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the agent's API; send heartbeats once this machine is enrolled."""
    from nebula.agent.app import start

    code = start(host, port, config)
    if code:
        raise typer.Exit(code)


@agent_app.command()
def enroll(
    server: Annotated[
        str, typer.Option("--server", help="The control plane's URL, e.g. https://nebula.lan.")
    ],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            help="The one-time enrollment token from `nebula node add`.",
            envvar="NEBULA_ENROLL_TOKEN",
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Enroll this machine with the control plane and save the agent's tokens."""
    import asyncio

    from nebula.agent.enroll import enroll as enroll_agent
    from nebula.agent.runtime import advertise_url
    from nebula.agent.state import default_state_path

    settings = load(config)
    path = default_state_path()
    try:
        state = asyncio.run(
            enroll_agent(
                server,
                token,
                agent_url=advertise_url(settings, settings.host, settings.port),
                state_path=path,
            )
        )
    except AgentError as err:
        fail(err.message, err.hint)
    except OSError as err:
        fail(f"cannot save {path}: {err.strerror or err}")
    print(f"Enrolled as node {state.node} with {state.server}; state saved in {path}.")
    print("Start the agent (or restart its service): nebula agent run")


@agent_app.command()
def show(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Print the enrollment state and the config in use (never the tokens)."""
    from nebula.agent.state import default_state_path, read_state

    settings = load(config)
    path = default_state_path()
    try:
        state = read_state(path)
    except AgentError as err:
        fail(err.message, err.hint)
    info = {
        "state_file": str(path),
        "enrolled": bool(state and state.enrolled),
        "state": state.public() if state else None,
        "config_file": str(settings.path) if settings.path else None,
        "listen": f"{settings.host}:{settings.port}",
        "allow_from": [str(n) for n in settings.allow_from],
        "capabilities": list(settings.capabilities),
        "services": sorted(settings.services),
        "repos": sorted(settings.repos),
        "actions": sorted(settings.actions),
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return
    if state and state.enrolled:
        print(f"Enrolled as node {state.node} with {state.server}.")
    else:
        print("Not enrolled: serving pull-only (enroll with `nebula agent enroll`).")
    for key, value in info.items():
        if key not in ("state", "enrolled"):
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"  {key}: {shown if shown not in (None, '') else '-'}")
    if state:
        print(f"  control tokens accepted: {len(state.control_tokens)}")
