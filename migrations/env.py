"""Alembic environment: runs migrations over the async engine Nebula Command uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from nebula.fleet import models as fleet_models  # noqa: F401  (registers the fleet tables)
from nebula.kernel import (
    event_models,  # noqa: F401  (registers the event bus tables)
    models,  # noqa: F401  (registers the kernel tables)
)
from nebula.kernel.db import Base, create_engine
from nebula.kernel.jobs import models as job_models  # noqa: F401  (registers the job tables)

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
