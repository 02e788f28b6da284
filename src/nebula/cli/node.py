"""`nebula node ...`: the machines of the fleet from the command line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from nebula.cli.common import JsonOption, friendly, out, print_json, run, settings_with_schema
from nebula.fleet.schemas import ENVIRONMENTS, NodeInfo
from nebula.fleet.service import FleetService, parse_node_spec
from nebula.kernel.audit import Actor
from nebula.kernel.auth import parse_duration
from nebula.kernel.db import Database
from nebula.kernel.secrets import SecretStore, load_keyring

node_app = typer.Typer(help="Machines of the fleet: agents and SSH nodes.", no_args_is_help=True)
NodeName = Annotated[str, typer.Argument(help="Node name, e.g. n1 or gpu-vm.")]
T = TypeVar("T")


def with_fleet(work: Callable[[FleetService], Awaitable[T]]) -> T:
    settings = settings_with_schema()

    async def session() -> T:
        db = Database(settings.main_database_url)
        try:
            return await work(FleetService(db, SecretStore(db, load_keyring(settings))))
        finally:
            await db.dispose()

    return run(session())


def node_dict(node: NodeInfo) -> dict[str, Any]:
    return node.model_dump(mode="json")


def age(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


@node_app.command("add")
@friendly
def add(
    name: NodeName,
    kind: Annotated[str, typer.Option(help="agent (runs `nebula agent`) or ssh.")] = "agent",
    environment: Annotated[
        str, typer.Option(help=f"Where it runs: {', '.join(ENVIRONMENTS)}.")
    ] = "other",
    address: Annotated[
        str | None, typer.Option(help="Host name or IP (Tailscale or LAN) of the node.")
    ] = None,
    mac: Annotated[str | None, typer.Option(help="MAC address, for wake-on-LAN.")] = None,
    broadcast: Annotated[
        str | None, typer.Option(help="Broadcast address of its LAN, for wake-on-LAN.")
    ] = None,
    ssh_user: Annotated[str | None, typer.Option(help="SSH user (ssh nodes).")] = None,
    ssh_port: Annotated[int, typer.Option(help="SSH port (ssh nodes).", min=1, max=65535)] = 22,
    expires: Annotated[str, typer.Option(help="Enrollment token lifetime, e.g. 1h, 7d.")] = "24h",
    reissue: Annotated[
        bool, typer.Option(help="The node exists: print a new enrollment token for it.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Add a node. For an agent node, the last line printed is its enrollment token."""
    ttl = parse_duration(expires)
    if reissue:
        fresh = with_fleet(
            lambda fleet: fleet.reissue_enrollment(Actor.cli(), name, enroll_ttl=ttl)
        )
        if as_json:
            print_json({"node": name, "enrollment_token": fresh})
            return
        out.print(f"New enrollment token for {name} (one use, expires in {expires}):")
        print(fresh)
        return
    spec = parse_node_spec(
        name=name,
        kind=kind,
        environment=environment,
        address=address,
        mac=mac,
        broadcast=broadcast,
        ssh_user=ssh_user,
        ssh_port=ssh_port,
    )
    node, token = with_fleet(lambda fleet: fleet.add_node(Actor.cli(), spec, enroll_ttl=ttl))
    if as_json:
        print_json({"node": node_dict(node), "enrollment_token": token})
        return
    if token is None:
        out.print(f"Added SSH node {name}.", highlight=False)
        return
    out.print(
        f"Added node {name}. On that machine run:\n"
        f"  nebula agent enroll --server <this control plane's URL> --token <token below>\n"
        f"The token works once and expires in {expires}.",
        highlight=False,
    )
    print(token)


@node_app.command("list")
@friendly
def list_nodes(as_json: JsonOption = False) -> None:
    """Every node with its status and latest figures."""
    nodes = with_fleet(lambda fleet: fleet.list_nodes())
    if as_json:
        print_json([node_dict(n) for n in nodes])
        return
    table = Table("name", "kind", "status", "last seen", "cpu", "mem", "disk", "capabilities")
    for n in nodes:
        metrics = n.metrics or {}
        table.add_row(
            n.name,
            n.kind,
            n.status,
            age(n.last_seen),
            _percent(metrics.get("cpu_percent")),
            _percent((metrics.get("memory") or {}).get("percent")),
            _percent((metrics.get("disk") or {}).get("percent")),
            ", ".join(n.capabilities),
        )
    out.print(table)


@node_app.command("show")
@friendly
def show(name: NodeName, as_json: JsonOption = False) -> None:
    """One node in full."""
    node = with_fleet(lambda fleet: fleet.get(name))
    if as_json:
        print_json(node_dict(node))
        return
    for key, value in node_dict(node).items():
        out.print(f"[bold]{key}[/]: {value}", highlight=False)


@node_app.command("remove")
@friendly
def remove(
    name: NodeName,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Forget a node; its agent's tokens stop working."""
    if not yes:
        typer.confirm(f"Remove node {name}?", abort=True)
    with_fleet(lambda fleet: fleet.remove(Actor.cli(), name))
    out.print(f"Removed node {name}.", highlight=False)


@node_app.command("rotate-tokens")
@friendly
def rotate_tokens(name: NodeName) -> None:
    """New agent and control tokens, handed to the agent in its next heartbeat."""
    with_fleet(lambda fleet: fleet.request_rotation(Actor.cli(), name))
    out.print(
        f"Rotation requested; {name}'s agent receives new tokens with its next heartbeat "
        "and the old ones keep working for an hour.",
        highlight=False,
    )


def _percent(value: Any) -> str:
    return f"{value:.0f}%" if isinstance(value, int | float) else "-"
