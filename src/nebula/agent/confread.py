"""Typed reads from a parsed TOML table; every mistake names its key in one line."""

from __future__ import annotations

import re
from typing import Any, NoReturn

from nebula.agent.errors import ConfigError


class Table:
    """One TOML table. Read keys with the typed getters, then call `done()`:
    a key nobody read is a typo, and is refused rather than ignored."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.key(name)}: {problem}")

    def _get(self, name: str) -> Any:
        self._read.add(name)
        return self.data.get(name)

    def raw(self, name: str) -> Any:
        """The value as TOML gave it (checked by the caller), or None."""
        return self._get(name)

    def string(self, name: str, default: str, *, max_length: int = 4096) -> str:
        value = self.optional_string(name, max_length=max_length)
        return default if value is None else value

    def optional_string(self, name: str, *, max_length: int = 4096) -> str | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(name, f"expected a string, got {_show(value)}")
        if len(value) > max_length:
            self.fail(name, f"longer than {max_length} characters")
        if "\x00" in value:
            self.fail(name, "contains a NUL character")
        return value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self.optional_integer(name, low=low, high=high)
        return default if value is None else value

    def optional_integer(self, name: str, *, low: int, high: int) -> int | None:
        value = self._get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(name, f"expected an integer from {low} to {high}, got {_show(value)}")
        return value

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        value = self._get(name)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            self.fail(name, f"expected a number from {low:g} to {high:g}, got {_show(value)}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(name, f"expected true or false, got {_show(value)}")
        return value

    def strings(self, name: str, *, allow_single: bool = False) -> list[str]:
        value = self._get(name)
        if value is None:
            return []
        if allow_single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(name, f"expected a list of strings, got {_show(value)}")
        if any("\x00" in v for v in value):
            self.fail(name, "contains a NUL character")
        return list(value)

    def table(self, name: str) -> Table:
        value = self._get(name)
        if value is None:
            return Table({}, self.key(name))
        if not isinstance(value, dict):
            self.fail(name, f"expected a table, got {_show(value)}")
        return Table(value, self.key(name))

    def subtables(self) -> list[tuple[str, Table]]:
        """Every key of this table, each holding a table (like `[services.NAME]`)."""
        found = []
        for name, value in self.data.items():
            self._read.add(name)
            if not isinstance(value, dict):
                self.fail(name, f"expected a table, got {_show(value)}")
            found.append((name, Table(value, self.key(name))))
        return found

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            self.fail(unknown[0], "unknown key (check its spelling; see deploy/agent.example.toml)")


def check_name(table: Table, name: str, pattern: str, what: str) -> None:
    if not re.fullmatch(pattern, name):
        table.fail(
            name, f"{what} names use lower-case letters, digits, '.', '_' and '-' ({pattern})"
        )


def check_http_url(table: Table, name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", value):
        table.fail(name, f"expected an http:// or https:// URL, got {_show(value)}")
    return value.rstrip("/")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
