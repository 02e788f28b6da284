"""The `nebula` command: serve the dashboard, manage the database, users, tokens, secrets."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from nebula import __version__
from nebula.cli.agent import agent_app
from nebula.cli.common import (
    JsonOption,
    ask_password,
    err_console,
    friendly,
    out,
    print_json,
    read_stdin_value,
    run,
    settings_with_schema,
    with_db,
)
from nebula.cli.jobs import jobs_app, worker
from nebula.cli.node import node_app
from nebula.kernel.audit import Actor
from nebula.kernel.auth import AuthService, parse_duration
from nebula.kernel.config import Settings, load_settings, redact_url
from nebula.kernel.db import Database
from nebula.kernel.errors import InvalidInput
from nebula.kernel.migrate import upgrade
from nebula.kernel.secrets import SecretStore, load_keyring, parse_key

app = typer.Typer(
    help="Nebula Command: one control plane for your homelab, Discord community and streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
user_app = typer.Typer(help="Dashboard users and their roles.", no_args_is_help=True)
token_app = typer.Typer(
    help="API tokens for scripts (Authorization: Bearer).", no_args_is_help=True
)
secrets_app = typer.Typer(help="Secrets encrypted at rest.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(secrets_app, name="secrets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(node_app, name="node")
app.add_typer(agent_app, name="agent")
app.command("worker")(worker)

# serve / db / version -----------------------------------------------------------


@app.command()
@friendly
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.", min=1, max=65535)] = None,
) -> None:
    """Start the dashboard and API (upgrades the database first)."""
    import uvicorn

    from nebula.web import create_app

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = settings_with_schema(**overrides)
    load_keyring(settings)  # creates the key file on first run, before any request needs it
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    err_console.print(
        f"Nebula Command {__version__} on http://{settings.host}:{settings.port} "
        f"(env {settings.env}, database {redact_url(settings.main_database_url)})",
        highlight=False,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_level=settings.log_level.lower(),
        log_config=None,
    )


@db_app.command("upgrade")
@friendly
def db_upgrade() -> None:
    """Apply every pending migration."""
    settings = load_settings()
    upgrade(settings.main_database_url)
    out.print(f"Database is up to date: {redact_url(settings.main_database_url)}", highlight=False)


@app.command()
def version(as_json: JsonOption = False) -> None:
    """Print the version."""
    if as_json:
        print_json({"version": __version__})
    else:
        print(__version__)


@app.command()
@friendly
def doctor(as_json: JsonOption = False) -> None:
    """Check environment, configuration, database, Redis and secrets."""
    from nebula.kernel.doctor import run_checks

    checks = run(run_checks(load_settings()))
    if as_json:
        print_json([c.as_dict() for c in checks])
    else:
        marks = {
            "ok": "[green]ok   [/]",
            "info": "[cyan]info [/]",
            "warn": "[yellow]warn [/]",
            "error": "[bold red]error[/]",
        }
        for c in checks:
            out.print(f"{marks[c.status]} [bold]{c.name}[/]: {escape(c.detail)}", highlight=False)
            if c.hint and c.status != "ok":
                out.print(f"      [dim]fix:[/] {escape(c.hint)}", highlight=False)
    if any(c.status == "error" for c in checks):
        raise typer.Exit(1)


# users ---------------------------------------------------------------------------


@user_app.command("create")
@friendly
def user_create(
    name: Annotated[str, typer.Argument(help="Username.")],
    role: Annotated[str, typer.Option(help="admin, operator or viewer.")] = "viewer",
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
) -> None:
    """Create a user. Asks for the password unless --password-stdin."""
    password = ask_password(password_stdin)
    settings = settings_with_schema()
    user = run(
        with_db(
            settings,
            lambda db: AuthService(db, settings).create_user(Actor.cli(), name, password, role),
        )
    )
    out.print(f"Created user {user.username} ({user.role.value}).", highlight=False)


@user_app.command("list")
@friendly
def user_list(as_json: JsonOption = False) -> None:
    """List users and their roles."""
    settings = settings_with_schema()
    users = run(with_db(settings, lambda db: AuthService(db, settings).list_users()))
    if as_json:
        print_json(
            [
                {
                    "username": u.username,
                    "role": u.role.value,
                    "is_active": u.is_active,
                    "created_at": u.created_at,
                    "last_login_at": u.last_login_at,
                }
                for u in users
            ]
        )
        return
    table = Table("user", "role", "created", "last sign-in")
    for u in users:
        table.add_row(
            u.username,
            u.role.value,
            f"{u.created_at:%Y-%m-%d}",
            f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "never",
        )
    out.print(table)


@user_app.command("set-password")
@friendly
def user_set_password(
    name: Annotated[str, typer.Argument(help="Username.")],
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
) -> None:
    """Set a new password; the user is signed out everywhere."""
    password = ask_password(password_stdin)
    settings = settings_with_schema()
    run(
        with_db(
            settings, lambda db: AuthService(db, settings).set_password(Actor.cli(), name, password)
        )
    )
    out.print(f"Password of {name} changed; their sessions were ended.", highlight=False)


# tokens --------------------------------------------------------------------------


@token_app.command("create")
@friendly
def token_create(
    user: Annotated[str, typer.Option("--user", help="Whose token it is.")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="Limit to a permission, e.g. system:read (repeatable)."),
    ] = None,
    expires: Annotated[str | None, typer.Option(help="Lifetime such as 30d, 12h, 2w.")] = None,
    name: Annotated[str, typer.Option(help="A label to recognise it by.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Create an API token. It is printed once, on the last line."""
    lifetime = parse_duration(expires) if expires else None
    settings = settings_with_schema()
    token, info = run(
        with_db(
            settings,
            lambda db: AuthService(db, settings).create_api_token(
                Actor.cli(), user, name=name, scopes=scope or [], expires_in=lifetime
            ),
        )
    )
    if as_json:
        print_json(
            {
                "token": token,
                "prefix": info.prefix,
                "user": info.username,
                "scopes": info.scopes,
                "expires_at": info.expires_at,
            }
        )
        return
    err_console.print(
        f"Token {info.prefix} for {info.username}"
        + (f", expires {info.expires_at:%Y-%m-%d %H:%M} UTC" if info.expires_at else "")
        + ". Store it now: it is not shown again.",
        highlight=False,
    )
    print(token)


@token_app.command("revoke")
@friendly
def token_revoke(
    prefix: Annotated[str, typer.Argument(help="The token's prefix, nbl_xxxxxxxx.")],
) -> None:
    """Revoke an API token by its visible prefix."""
    settings = settings_with_schema()
    run(
        with_db(
            settings, lambda db: AuthService(db, settings).revoke_api_token(Actor.cli(), prefix)
        )
    )
    out.print(f"Revoked {prefix}.", highlight=False)


@token_app.command("list")
@friendly
def token_list(as_json: JsonOption = False) -> None:
    """List API tokens (prefixes only; values are never stored)."""
    settings = settings_with_schema()
    tokens = run(with_db(settings, lambda db: AuthService(db, settings).list_api_tokens()))
    if as_json:
        print_json([t.__dict__ for t in tokens])
        return
    table = Table("prefix", "user", "scopes", "expires", "state")
    for t in tokens:
        table.add_row(
            t.prefix,
            t.username,
            ", ".join(t.scopes) or "all of role",
            f"{t.expires_at:%Y-%m-%d}" if t.expires_at else "never",
            "revoked" if t.revoked else "active",
        )
    out.print(table)


# secrets -------------------------------------------------------------------------


def secret_store(db: Database, settings: Settings) -> SecretStore:
    return SecretStore(db, load_keyring(settings))


@secrets_app.command("set")
@friendly
def secrets_set(
    name: Annotated[str, typer.Argument(help="Secret name, e.g. discord.token.")],
    value_stdin: Annotated[bool, typer.Option(help="Read the value from stdin.")] = False,
    scope: Annotated[str, typer.Option(help="Who the secret belongs to.")] = "global",
) -> None:
    """Store a secret, encrypted. The value is read from stdin, never from arguments."""
    if not value_stdin:
        raise InvalidInput(
            "Pass the value on standard input with --value-stdin.",
            hint="Values on the command line end up in shell history.",
        )
    value = read_stdin_value("secret value")
    settings = settings_with_schema()
    version_ = run(
        with_db(
            settings, lambda db: secret_store(db, settings).set(Actor.cli(), name, value, scope)
        )
    )
    out.print(f"Stored {scope}/{name} (version {version_}).", highlight=False)


@secrets_app.command("list")
@friendly
def secrets_list(as_json: JsonOption = False) -> None:
    """List stored secrets (names, versions and key ids; never values)."""
    settings = settings_with_schema()
    items = run(with_db(settings, lambda db: secret_store(db, settings).list()))
    if as_json:
        print_json([i.__dict__ for i in items])
        return
    table = Table("scope", "name", "version", "key", "updated")
    for i in items:
        table.add_row(i.scope, i.name, str(i.version), i.key_id, f"{i.updated_at:%Y-%m-%d %H:%M}")
    out.print(table)


@secrets_app.command("rotate-key")
@friendly
def secrets_rotate_key(
    new_key_stdin: Annotated[
        bool,
        typer.Option(help="Read the new master key from stdin (required with NEBULA_SECRET_KEY)."),
    ] = False,
) -> None:
    """Re-encrypt every secret under a new master key."""
    new_key = parse_key(read_stdin_value("new master key")) if new_key_stdin else None
    settings = settings_with_schema()
    key_id, count = run(
        with_db(settings, lambda db: secret_store(db, settings).rotate_key(Actor.cli(), new_key))
    )
    out.print(f"Re-encrypted {count} secret(s) under key {key_id}.", highlight=False)
    if settings.secret_key is not None:
        out.print("Now set NEBULA_SECRET_KEY to the new key and restart Nebula Command.")


def main() -> None:
    app()
