"""`nebula node ...`: the machines of the fleet from the command line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.table import Table

from nebula.cli.common import (
    JsonOption,
    err_console,
    friendly,
    out,
    print_json,
    read_stdin_value,
    run,
    settings_with_schema,
)
from nebula.fleet import servicemap
from nebula.fleet.agent_client import AgentClient, NodeUnreachable
from nebula.fleet.control import FleetControl
from nebula.fleet.discovery import Discovery, Peer
from nebula.fleet.schemas import ENVIRONMENTS, NodeInfo
from nebula.fleet.service import FleetService, parse_node_spec
from nebula.fleet.ssh import SshPool
from nebula.fleet.wake import wake
from nebula.kernel.audit import Actor
from nebula.kernel.auth import parse_duration
from nebula.kernel.db import Database
from nebula.kernel.errors import InvalidInput
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


@node_app.command("import")
@friendly
def import_map(
    path: Annotated[Path, typer.Argument(help="A service-map.yml file.")],
    dry_run: Annotated[bool, typer.Option(help="Only check the file.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create or update nodes from a service map (all or nothing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"Cannot read {path}: {err}") from None
    if dry_run:
        parsed = servicemap.parse(text)
        out.print(f"{path} is valid: {len(parsed.nodes)} node(s).", highlight=False)
        return
    result = with_fleet(lambda fleet: servicemap.import_map(fleet, Actor.cli(), text))
    if as_json:
        print_json(result)
        return
    for name in result["updated"]:
        out.print(f"updated {name}", highlight=False)
    for name, token in result["created"].items():
        out.print(f"added {name}" + (f"; enrollment token: {token}" if token else ""))


@node_app.command("export")
@friendly
def export_map(
    path: Annotated[
        Path | None, typer.Argument(help="Write here instead of standard output.")
    ] = None,
) -> None:
    """The fleet as a service map (no secrets)."""
    text = servicemap.export_map(with_fleet(lambda fleet: fleet.list_nodes()))
    if path is None:
        print(text, end="")
        return
    path.write_text(text, encoding="utf-8")
    out.print(f"Wrote {path}.", highlight=False)


@node_app.command("discover")
@friendly
def discover(
    capability: Annotated[str, typer.Argument(help="e.g. ollama, gpu, docker, wol-relay.")],
    as_json: JsonOption = False,
) -> None:
    """Where a capability is available, best first, with reachability."""
    settings = settings_with_schema()

    async def find(fleet: FleetService) -> list[Peer]:
        return await Discovery(fleet.list_nodes, settings).discover(capability)

    peers = with_fleet(find)
    if as_json:
        print_json([asdict(p) for p in peers])
        return
    if not peers:
        out.print(f"No peer offers {capability}.", highlight=False)
    for p in peers:
        state = {True: "reachable", False: "unreachable", None: "not probed"}[p.reachable]
        out.print(f"{p.url}  ({p.node or '-'}, from {p.source}, {state})", highlight=False)


def with_control(work: Callable[[FleetService, FleetControl], Awaitable[T]]) -> T:
    """Like `with_fleet`, with the clients that reach nodes (agents over HTTP, SSH)."""

    async def session(fleet: FleetService) -> T:
        async with httpx.AsyncClient() as http:
            control = FleetControl(fleet, AgentClient(http, fleet), SshPool())
            try:
                return await work(fleet, control)
            finally:
                await control.ssh.aclose()

    return with_fleet(session)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--param {pair!r}: use KEY=VALUE.")
        params[key] = value
    return params


@node_app.command("exec")
@friendly
def exec_action(
    name: NodeName,
    action: Annotated[str, typer.Argument(help="An allow-listed action of that node.")],
    param: Annotated[
        list[str] | None, typer.Option(help="A parameter as KEY=VALUE (repeatable).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run an allow-listed action on a node (never a free-form command)."""
    params = parse_params(param or [])
    result = with_control(lambda _, control: control.execute(Actor.cli(), name, action, params))
    if as_json:
        print_json(result)
    else:
        if result.get("stdout"):
            print(result["stdout"], end="" if result["stdout"].endswith("\n") else "\n")
        if result.get("stderr"):
            err_console.print(result["stderr"], end="", highlight=False, markup=False)
    code = result.get("exit_code")
    if isinstance(code, int) and code != 0:
        raise typer.Exit(1)


@node_app.command("wake")
@friendly
def wake_node(
    name: NodeName,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it.", min=5)] = 180,
) -> None:
    """Send a wake-on-LAN packet (directly or through a relay agent) and wait for the node."""

    async def say(percent: int, message: str) -> None:
        err_console.print(f"[{percent:3d}%] {message}", highlight=False)

    result = with_control(
        lambda fleet, control: wake(
            fleet, control.agents, Actor.cli(), name, timeout_s=timeout, progress=say
        )
    )
    if not result.awake:
        raise NodeUnreachable(f"{name} did not answer within {timeout:.0f} s.")
    if result.sent_via:
        out.print(f"{name} is up ({result.seconds:.0f} s, sent {result.sent_via}).")
    else:
        out.print(f"{name} is already online.")


@node_app.command("set-ssh-key")
@friendly
def set_ssh_key(
    name: NodeName,
    key_file: Annotated[Path, typer.Argument(help="Private key file (OpenSSH or PEM).")],
    passphrase_stdin: Annotated[
        bool, typer.Option(help="Read the key's passphrase from standard input.")
    ] = False,
) -> None:
    """Store an SSH node's private key, encrypted at rest."""
    try:
        key_text = key_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"Cannot read {key_file}: {err}") from None
    passphrase = read_stdin_value("passphrase") if passphrase_stdin else None
    with_fleet(lambda fleet: fleet.set_ssh_key(Actor.cli(), name, key_text, passphrase))
    out.print(f"Stored the SSH key for {name}.", highlight=False)
