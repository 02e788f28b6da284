"""Helpers every `nebula` command shares: one-line errors, JSON output, stdin values."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from nebula.kernel.config import Settings, load_settings
from nebula.kernel.db import Database
from nebula.kernel.errors import InvalidInput, NebulaError
from nebula.kernel.migrate import upgrade

out = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

P = ParamSpec("P")
T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    # One line, so scripts and log collectors see the whole story together.
    suffix = f" [dim]({escape(hint)})[/]" if hint else ""
    err_console.print(f"[bold red]error:[/] {escape(message)}{suffix}", highlight=False)
    raise typer.Exit(code)


def friendly(func: Callable[P, T]) -> Callable[P, T]:
    """Turn our errors into one red line and an exit code; never a traceback."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except NebulaError as err:
            fail(err.message, err.hint)
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def settings_with_schema(**overrides: Any) -> Settings:
    """Settings, with the database brought up to date (idempotent, fast when current)."""
    settings = load_settings(**overrides)
    upgrade(settings.main_database_url)
    return settings


async def with_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    db = Database(settings.main_database_url)
    try:
        return await work(db)
    finally:
        await db.dispose()


def read_stdin_value(what: str) -> str:
    if sys.stdin.isatty():
        err_console.print(f"Type the {what}, then press Ctrl-D:")
    value = sys.stdin.read().rstrip("\r\n")
    if not value:
        raise InvalidInput(f"No {what} on standard input.")
    return value


def ask_password(stdin: bool) -> str:
    if stdin:
        return read_stdin_value("password")
    if not sys.stdin.isatty():
        raise InvalidInput("No terminal to ask for the password.", hint="Use --password-stdin.")
    first = typer.prompt("Password", hide_input=True)
    if typer.prompt("Repeat password", hide_input=True) != first:
        raise InvalidInput("The two passwords do not match.")
    return str(first)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))
