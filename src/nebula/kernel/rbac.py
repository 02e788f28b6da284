"""Roles and what each may do. The one table every check reads; routes never re-implement it."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from nebula.kernel.errors import InvalidInput


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Permission(StrEnum):
    SYSTEM_READ = "system:read"
    FLEET_READ = "fleet:read"
    FLEET_WRITE = "fleet:write"
    JOBS_READ = "jobs:read"
    JOBS_WRITE = "jobs:write"
    JOBS_APPROVE = "jobs:approve"
    AUDIT_READ = "audit:read"
    USERS_READ = "users:read"
    USERS_WRITE = "users:write"
    SECRETS_READ = "secrets:read"
    SECRETS_WRITE = "secrets:write"
    SETTINGS_READ = "settings:read"
    SETTINGS_WRITE = "settings:write"


_READ: Final = frozenset({Permission.SYSTEM_READ, Permission.FLEET_READ, Permission.JOBS_READ})

ROLE_PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    Role.VIEWER: _READ,
    Role.OPERATOR: _READ
    | {
        Permission.FLEET_WRITE,
        Permission.JOBS_WRITE,
        Permission.AUDIT_READ,
        Permission.SETTINGS_READ,
    },
    Role.ADMIN: frozenset(Permission),
}


def parse_role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError as err:
        choices = ", ".join(r.value for r in Role)
        raise InvalidInput(f"Unknown role {value!r}; use one of: {choices}.") from err


def parse_scopes(values: list[str]) -> list[str]:
    """API token scopes are permission names; none means the user's whole role."""
    known = {p.value for p in Permission}
    unknown = [v for v in values if v not in known]
    if unknown:
        raise InvalidInput(
            f"Unknown scope(s): {', '.join(unknown)}.", hint=f"Known: {', '.join(sorted(known))}"
        )
    return sorted(set(values))


def effective_permissions(role: Role, scopes: list[str] | None = None) -> frozenset[Permission]:
    granted = ROLE_PERMISSIONS[role]
    if not scopes:
        return granted
    return granted & {Permission(s) for s in scopes}
