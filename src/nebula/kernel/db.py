"""SQLAlchemy 2 async engine and sessions. SQLite by default, PostgreSQL in production.

Schema changes go through Alembic (`migrations/`); nothing here creates tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from nebula.kernel.config import redact_url
from nebula.kernel.errors import DatabaseUnavailable

# Enough for the web server plus a worker at full concurrency without connection churn.
POOL_SIZE = 20

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps are stored and returned as aware UTC datetimes on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event below issue BEGIN itself (the driver's own is lazy).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    # Take the write lock up front: a transaction that reads and then writes would
    # otherwise fail with "database is locked" when two processes race, instead of
    # waiting its turn (busy_timeout only covers locks taken at the start).
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def ensure_sqlite_dir(url: str) -> None:
    """A fresh machine has no data dir yet; SQLite needs its folder to exist."""
    database = make_url(url).database
    if is_sqlite(url) and database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str) -> AsyncEngine:
    ensure_sqlite_dir(url)
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 15})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_async_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=POOL_SIZE,
        pool_pre_ping=True,
        connect_args={"timeout": 10},
    )


@dataclass
class DatabaseInfo:
    backend: str
    version: str
    url: str


class Database:
    """The engine and a session factory. Services open one transaction per operation."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends, rolled back on error."""
        async with self.sessions.begin() as session:
            yield session

    async def info(self) -> DatabaseInfo:
        """Backend name and server version; raises `DatabaseUnavailable` if unreachable."""
        query = "select sqlite_version()" if is_sqlite(self.url) else "show server_version"
        try:
            async with asyncio.timeout(10), self.engine.connect() as conn:
                version = (await conn.execute(text(query))).scalar_one()
        except (OSError, OperationalError, DBAPIError, TimeoutError) as err:
            raise unavailable(self.url, err) from err
        return DatabaseInfo(
            backend=make_url(self.url).get_backend_name(),
            version=str(version),
            url=redact_url(self.url),
        )

    async def dispose(self) -> None:
        await self.engine.dispose()


def first_line(err: BaseException) -> str:
    """The driver's own message, first line only (SQLAlchemy wraps it in `orig`)."""
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def unavailable(url: str, err: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"Cannot reach the database at {redact_url(url)}: {first_line(err)}",
        hint="Check NEBULA_DATABASE_URL and that the server is running.",
    )
