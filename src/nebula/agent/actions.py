"""Configured actions: an argv template and typed parameters, checked before anything runs.

    [actions.restart-unit]
    argv = ["systemctl", "restart", "{unit}"]
    [actions.restart-unit.params.unit]
    type = "string"
    pattern = "[a-z0-9@._-]+[.]service"

A placeholder is replaced inside its argv element; an element is never split, so a
value always arrives as (part of) exactly one argument. The program (argv[0]) is
always literal. Values with NUL, CR or LF are refused, and so are values starting
with `-` unless the parameter says `allow_leading_dash = true`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, cast

from nebula.agent import const
from nebula.agent.confread import Table, check_name
from nebula.agent.errors import BadRequest

ParamType = Literal["string", "int", "enum", "bool"]
PARAM_TYPES: Final = ("string", "int", "enum", "bool")
PARAM_NAME_PATTERN: Final = r"[a-z_][a-z0-9_]{0,31}"
# `{name}` is a placeholder; `{{` and `}}` are literal braces; a lone brace is a mistake.
_TOKEN = re.compile(r"\{\{|\}\}|\{([a-z_][a-z0-9_]{0,31})\}|[{}]")
_FORBIDDEN = ("\x00", "\r", "\n")
INT_LIMIT: Final = 2**53  # what a JSON number keeps exactly

Value = str | int | bool


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: ParamType
    description: str = ""
    pattern: re.Pattern[str] | None = None
    max_length: int = const.STRING_PARAM_MAX_LENGTH
    minimum: int | None = None
    maximum: int | None = None
    values: tuple[str, ...] = ()
    allow_leading_dash: bool = False
    default: Value | None = None

    def check(self, value: Any) -> str:
        """The value as it will appear in argv, or a `BadRequest` naming the parameter."""
        text = self._typed(value)
        if any(c in text for c in _FORBIDDEN):
            raise BadRequest(f"Parameter {self.name!r} contains NUL, CR or LF, which are refused.")
        if text.startswith("-") and not self.allow_leading_dash:
            raise BadRequest(
                f"Parameter {self.name!r} starts with '-', which is refused here "
                "(it could be read as an option)."
            )
        return text

    def _typed(self, value: Any) -> str:
        where = f"Parameter {self.name!r}"
        if self.type == "bool":
            if not isinstance(value, bool):
                raise BadRequest(f"{where} must be true or false.")
            return "true" if value else "false"
        if self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadRequest(f"{where} must be an integer.")
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise BadRequest(f"{where} must be {self._range()}.")
            return str(value)
        if not isinstance(value, str):
            raise BadRequest(f"{where} must be a string.")
        if self.type == "enum":
            if value not in self.values:
                raise BadRequest(f"{where} must be one of: {', '.join(self.values)}.")
            return value
        if len(value) > self.max_length:
            raise BadRequest(f"{where} is longer than {self.max_length} characters.")
        assert self.pattern is not None  # every string param has one (checked at load)
        if not self.pattern.fullmatch(value):
            raise BadRequest(f"{where} does not match the pattern {self.pattern.pattern!r}.")
        return value

    def _range(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f"at least {self.minimum}"
        return f"at most {self.maximum}"

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"type": self.type, "required": self.default is None}
        if self.description:
            info["description"] = self.description
        if self.type == "string":
            assert self.pattern is not None
            info.update(pattern=self.pattern.pattern, max_length=self.max_length)
        if self.type == "int":
            info.update(min=self.minimum, max=self.maximum)
        if self.type == "enum":
            info["values"] = list(self.values)
        if self.allow_leading_dash:
            info["allow_leading_dash"] = True
        if self.default is not None:
            info["default"] = self.default
        return info


@dataclass(frozen=True)
class ActionSpec:
    name: str
    argv: tuple[str, ...]
    params: dict[str, ParamSpec] = field(default_factory=dict)
    timeout_s: float = const.ACTION_TIMEOUT_S
    description: str = ""

    def render(self, given: Any) -> list[str]:
        """The argv to run for these parameters; refuses unknown, missing and bad ones."""
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise BadRequest('"params" must be an object of parameter names to values.')
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise BadRequest(
                f"Unknown parameter {unknown[0][:64]!r} for action {self.name!r}.",
                hint=f"It takes: {', '.join(self.params) or 'no parameters'}.",
            )
        values: dict[str, str] = {}
        for name, spec in self.params.items():
            if name in given:
                values[name] = spec.check(given[name])
            elif spec.default is not None:
                values[name] = spec.check(spec.default)
            else:
                raise BadRequest(f"Parameter {name!r} is required by action {self.name!r}.")
        return [substitute(element, values) for element in self.argv]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "params": {name: spec.describe() for name, spec in self.params.items()},
            "timeout_s": self.timeout_s,
        }


def substitute(element: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return values[match.group(1)]

    return _TOKEN.sub(replace, element)


def placeholders(element: str) -> list[str] | None:
    """Names used in one argv element; None when it has a lone or malformed brace."""
    names = []
    for match in _TOKEN.finditer(element):
        if match.group(0) in ("{", "}"):
            return None
        if match.group(1):
            names.append(match.group(1))
    return names


# Loading from the config file ------------------------------------------------------


def parse_action(name: str, table: Table) -> ActionSpec:
    argv = table.strings("argv")
    if not argv:
        table.fail("argv", "required: the program and its arguments, as a list of strings")
    params_table = table.table("params")
    params: dict[str, ParamSpec] = {}
    for param_name, param_table in params_table.subtables():
        check_name(params_table, param_name, PARAM_NAME_PATTERN, "parameter")
        params[param_name] = parse_param(param_name, param_table)
    used: set[str] = set()
    for index, element in enumerate(argv):
        names = placeholders(element)
        if names is None:
            table.fail("argv", f"element {index} has a lone brace; write {{{{ or }}}} for one")
        if index == 0 and names:
            table.fail("argv", "the program (first element) cannot be a placeholder")
        for placeholder in names:
            if placeholder not in params:
                table.fail("argv", f"placeholder {{{placeholder}}} has no [params.{placeholder}]")
            used.add(placeholder)
    unused = sorted(set(params) - used)
    if unused:
        params_table.fail(unused[0], "declared but not used in argv")
    spec = ActionSpec(
        name=name,
        argv=tuple(argv),
        params=params,
        timeout_s=table.number(
            "timeout_s", const.ACTION_TIMEOUT_S, low=0.1, high=const.ACTION_MAX_TIMEOUT_S
        ),
        description=table.string("description", ""),
    )
    table.done()
    return spec


def parse_param(name: str, table: Table) -> ParamSpec:
    kind = table.optional_string("type")
    if kind not in PARAM_TYPES:
        table.fail("type", f"required: one of {', '.join(PARAM_TYPES)}")
    kind = cast(ParamType, kind)
    pattern: re.Pattern[str] | None = None
    max_length = const.STRING_PARAM_MAX_LENGTH
    minimum = maximum = None
    values: tuple[str, ...] = ()
    if kind == "string":
        source = table.optional_string("pattern")
        if not source:
            table.fail("pattern", "required for string parameters (the whole value must match)")
        try:
            pattern = re.compile(source)
        except re.error as err:
            table.fail("pattern", f"not a valid regular expression: {err}")
        max_length = table.integer(
            "max_length", max_length, low=1, high=const.STRING_PARAM_HARD_LIMIT
        )
    elif kind == "int":
        minimum = table.optional_integer("min", low=-INT_LIMIT, high=INT_LIMIT)
        maximum = table.optional_integer("max", low=-INT_LIMIT, high=INT_LIMIT)
        if minimum is not None and maximum is not None and minimum > maximum:
            table.fail("min", "is greater than max")
    elif kind == "enum":
        values = tuple(table.strings("values"))
        if not values:
            table.fail("values", "required for enum parameters: the accepted strings")
    spec = ParamSpec(
        name=name,
        type=kind,
        description=table.string("description", ""),
        pattern=pattern,
        max_length=max_length,
        minimum=minimum,
        maximum=maximum,
        values=values,
        allow_leading_dash=table.boolean("allow_leading_dash", False),
    )
    default = table.raw("default")
    if default is not None:
        try:
            spec.check(default)
        except BadRequest as err:
            table.fail("default", err.message)
        spec = replace(spec, default=default)
    for value in values:
        if value.startswith("-") and not spec.allow_leading_dash:
            table.fail("values", f"{value!r} starts with '-': set allow_leading_dash = true")
        if any(c in value for c in _FORBIDDEN):
            table.fail("values", f"{value!r} contains NUL, CR or LF")
    table.done()
    return spec
