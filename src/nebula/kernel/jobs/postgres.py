"""A worker's hot path on PostgreSQL: one raw asyncpg connection per worker.

Through SQLAlchemy each worker transaction costs the pool's ping, BEGIN, SET LOCAL,
the statement and COMMIT. Here a worker's cycle is one statement on a connection of
its own that turned `synchronous_commit` off once: it records the jobs that finished,
claims the next ones, and says whether a job with a concurrency key could run too.
A state change lost in a server crash only makes a job run again, which at-least-once
delivery allows; enqueues stay fully durable on their own connections.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import asyncpg

from nebula.kernel.jobs.schemas import ClaimedJob
from nebula.kernel.jobs.wakeup import asyncpg_dsn

CONNECT_TIMEOUT_S: Final = 10.0
# How these connections show in pg_stat_activity.
WORKER_APPLICATION_NAME: Final = "nebula worker"
# A statement that takes this long means the server is in trouble: give up and let the
# worker back off, rather than hang with leases running out.
COMMAND_TIMEOUT_S: Final = 30.0

# In every statement, "NOT EXISTS (... json_array_elements_text ... <> ALL(caps))" says
# that no capability the job needs is missing from the worker's list.

# $1 owner, $2 now, $3 lease expiry, $4 finished ids, $5 their results as JSON text,
# $6 how many to claim, $7 the worker's capabilities.
CYCLE_SQL: Final = """
WITH done AS (
    UPDATE jobs SET status = 'succeeded', result = d.result::json, progress = 100,
        error = NULL, lease_owner = NULL, lease_expires_at = NULL, finished_at = $2
    FROM unnest($4::int[], $5::text[]) AS d(id, result)
    WHERE jobs.id = d.id AND jobs.lease_owner = $1 AND jobs.status = 'running'
    RETURNING jobs.id
), picked AS (
    SELECT id FROM jobs
    WHERE status = 'queued' AND concurrency_key IS NULL AND run_at <= $2
        AND NOT EXISTS (SELECT 1 FROM json_array_elements_text(jobs.capabilities) AS c(value)
            WHERE c.value <> ALL($7::text[]))
    ORDER BY priority DESC, id
    LIMIT $6
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $3,
        attempts = jobs.attempts + 1, started_at = $2
    FROM picked WHERE jobs.id = picked.id
    RETURNING jobs.id, jobs.kind, jobs.payload, jobs.attempts, jobs.priority
)
SELECT c.id, c.kind, c.payload, c.attempts, EXISTS (
    SELECT 1 FROM jobs AS k
    WHERE k.status = 'queued' AND k.concurrency_key IS NOT NULL AND k.run_at <= $2
        AND NOT EXISTS (SELECT 1 FROM json_array_elements_text(k.capabilities) AS c(value)
            WHERE c.value <> ALL($7::text[]))
        AND NOT EXISTS (
            SELECT 1 FROM jobs AS r
            WHERE r.status = 'running' AND r.concurrency_key = k.concurrency_key
                AND r.id NOT IN (SELECT id FROM done)
        )
) AS keyed_waiting
FROM (SELECT 1) AS one LEFT JOIN claimed AS c ON true
ORDER BY c.priority DESC, c.id
"""
# The statement sees the table as it was when it began, so a key whose job finished in
# `done` counts as free above; the keyed claim below runs after, and sees it free.

# $1 owner, $2 now, $3 lease expiry, $4 capabilities.
CLAIM_KEYED_SQL: Final = """
UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $3,
    attempts = jobs.attempts + 1, started_at = $2
WHERE jobs.id = (
    SELECT k.id FROM jobs AS k
    WHERE k.status = 'queued' AND k.concurrency_key IS NOT NULL AND k.run_at <= $2
        AND NOT EXISTS (SELECT 1 FROM json_array_elements_text(k.capabilities) AS c(value)
            WHERE c.value <> ALL($4::text[]))
        AND NOT EXISTS (
            SELECT 1 FROM jobs AS r
            WHERE r.status = 'running' AND r.concurrency_key = k.concurrency_key
        )
    ORDER BY k.priority DESC, k.id
    LIMIT 1
    FOR UPDATE OF k SKIP LOCKED
)
RETURNING jobs.id, jobs.kind, jobs.payload, jobs.attempts
"""

# $1 owner, $2 ids, $3 new expiry.
RENEW_SQL: Final = """
UPDATE jobs SET lease_expires_at = $3
WHERE id = ANY($2::int[]) AND lease_owner = $1 AND status = 'running'
RETURNING id, cancel_requested
"""

# Errors of the database or of the way to it: the worker waits and tries again (on a
# new connection).
TRANSIENT_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)

T = TypeVar("T")


def _claimed(row: asyncpg.Record) -> ClaimedJob:
    return ClaimedJob(
        id=row["id"], kind=row["kind"], payload=json.loads(row["payload"]), attempts=row["attempts"]
    )


class PostgresLink:
    """One worker's own connection, opened on first use and again after it is lost.

    Calls come from the worker's main loop one at a time; it never shares the link
    between tasks, so the connection needs no lock.
    """

    def __init__(self, url: str) -> None:
        self._dsn = asyncpg_dsn(url)
        self._connection: asyncpg.Connection | None = None

    async def _connect(self) -> asyncpg.Connection:
        stale = self._connection
        if stale is not None:
            if not stale.is_closed():
                return stale
            self._drop(stale)  # the server ended it (restart, termination)
        connection: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=COMMAND_TIMEOUT_S,
            server_settings={"application_name": WORKER_APPLICATION_NAME},
        )
        try:
            await connection.execute("SET synchronous_commit = off")
        except BaseException:
            connection.terminate()
            raise
        self._connection = connection
        return connection

    async def _run(self, action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        connection = await self._connect()
        try:
            return await action(connection)
        except asyncpg.UniqueViolationError:
            raise  # a refused claim; the connection is fine
        except BaseException:
            # Lost, ended by the server, timed out or interrupted mid-statement: the
            # next call opens another connection rather than guess at this one's state.
            self._drop(connection)
            raise

    def _drop(self, connection: asyncpg.Connection) -> None:
        if self._connection is connection:
            self._connection = None
        connection.terminate()

    async def cycle(
        self,
        owner: str,
        capabilities: Sequence[str],
        limit: int,
        done: Sequence[tuple[int, dict[str, Any] | None]],
        now: datetime,
        lease_until: datetime,
    ) -> tuple[list[ClaimedJob], bool]:
        """Record `done` as succeeded and claim up to `limit` jobs without a concurrency
        key; also tell whether a job with a free key is waiting for this worker."""
        ids = [job_id for job_id, _ in done]
        results = [json.dumps(result) for _, result in done]
        rows = await self._run(
            lambda c: c.fetch(
                CYCLE_SQL, owner, now, lease_until, ids, results, limit, list(capabilities)
            )
        )
        claimed = [_claimed(row) for row in rows if row["id"] is not None]
        return claimed, bool(rows and rows[0]["keyed_waiting"])

    async def claim_keyed(
        self, owner: str, capabilities: Sequence[str], now: datetime, lease_until: datetime
    ) -> ClaimedJob | None:
        """One job whose concurrency key no running job holds, or None."""
        try:
            row = await self._run(
                lambda c: c.fetchrow(CLAIM_KEYED_SQL, owner, now, lease_until, list(capabilities))
            )
        except asyncpg.UniqueViolationError:  # another worker started that key first
            return None
        return _claimed(row) if row is not None else None

    async def renew(
        self, owner: str, job_ids: Sequence[int], lease_until: datetime
    ) -> dict[int, bool]:
        """Extend leases still held; returns {job id: cancel requested}."""
        rows = await self._run(lambda c: c.fetch(RENEW_SQL, owner, list(job_ids), lease_until))
        return {row["id"]: row["cancel_requested"] for row in rows}

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(*TRANSIENT_ERRORS, OSError, TimeoutError):
                await connection.close(timeout=2)
                return
            connection.terminate()
