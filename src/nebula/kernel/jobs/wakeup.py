"""Waking idle workers when there is work: PostgreSQL LISTEN/NOTIFY, or in-process.

Workers also wake on a slow timer, so a lost notification costs latency, never a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.kernel.jobs.const import NOTIFY_CHANNEL

log = logging.getLogger("nebula.jobs")
RECONNECT_MAX_S = 10.0
HEALTH_CHECK_S = 2.0
LISTENER_APPLICATION_NAME = "nebula wake-up"  # how it shows in pg_stat_activity


def asyncpg_dsn(url: str) -> str:
    """The SQLAlchemy URL as asyncpg wants it (no `+asyncpg` driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Wakeup:
    def __init__(self, postgres_url: str | None) -> None:
        self._postgres_url = postgres_url
        self._event = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    def in_process(cls) -> Wakeup:
        return cls(None)

    @classmethod
    def for_database(cls, url: str) -> Wakeup:
        return cls(url if make_url(url).get_backend_name() == "postgresql" else None)

    @property
    def uses_database(self) -> bool:
        """Do wake-ups travel through PostgreSQL NOTIFY (to workers in any process)?"""
        return self._postgres_url is not None

    async def notify_in(self, session: AsyncSession) -> None:
        """Announce new work; on PostgreSQL it is delivered when the transaction commits."""
        if self._postgres_url:
            await session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))

    def notify_local(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        self._event.clear()

    def start(self) -> None:
        if self._postgres_url and self._listener is None:
            self._listener = asyncio.create_task(self._listen(self._postgres_url))

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self, url: str) -> None:
        """Hold a LISTEN connection, reconnecting with backoff when the server goes away."""
        delay = 0.5
        while True:
            connection: Any = None
            try:
                connection = await asyncpg.connect(
                    asyncpg_dsn(url),
                    timeout=10,
                    server_settings={"application_name": LISTENER_APPLICATION_NAME},
                )
                await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
                delay = 0.5
                self._event.set()  # work may have arrived while we were not listening
                while not connection.is_closed():
                    await asyncio.sleep(HEALTH_CHECK_S)
                    await connection.execute("SELECT 1")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
                log.warning("job wake-up channel lost (%s); retrying in %.1fs", err, delay)
            finally:
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311  (jitter)
            delay = min(RECONNECT_MAX_S, delay * 2)

    def _on_notify(self, *_args: object) -> None:
        self._event.set()
