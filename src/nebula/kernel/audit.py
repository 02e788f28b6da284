"""The audit log: who did what to which target, with what result, from where."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.kernel.db import Database
from nebula.kernel.models import AuditEntry

Result = Literal["ok", "denied", "failed"]
PAGE_SIZE: Final = 50


@dataclass(frozen=True)
class Actor:
    """Who acts: a signed-in user, a token, the command line or the system itself."""

    name: str
    ip: str = ""

    @classmethod
    def cli(cls) -> Actor:
        try:
            login = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry, e.g. in some containers
            login = "unknown"
        return cls(name=f"cli:{login}")

    @classmethod
    def system(cls) -> Actor:
        return cls(name="system")


def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    target: str = "",
    result: Result = "ok",
    **detail: Any,
) -> None:
    """Add an audit row to the caller's transaction, so it commits with the change itself."""
    session.add(
        AuditEntry(
            actor=actor.name[:96],
            action=action,
            target=target[:255],
            result=result,
            ip=actor.ip[:64],
            detail=detail,
        )
    )


async def record_alone(
    db: Database, actor: Actor, action: str, target: str = "", result: Result = "ok", **detail: Any
) -> None:
    """Record in a transaction of its own: for refusals, where nothing else commits."""
    async with db.begin() as session:
        record(session, actor, action, target, result, **detail)


async def list_entries(
    db: Database, *, page: int = 1, action: str | None = None
) -> tuple[list[AuditEntry], int]:
    """Newest first, one page at a time; returns the rows and the total count."""
    query = select(AuditEntry)
    count = select(func.count(AuditEntry.id))
    if action:
        query = query.where(AuditEntry.action.startswith(action))
        count = count.where(AuditEntry.action.startswith(action))
    query = query.order_by(AuditEntry.id.desc()).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
    async with db.begin() as session:
        rows = list((await session.scalars(query)).all())
        total = (await session.execute(count)).scalar_one()
    return rows, total
