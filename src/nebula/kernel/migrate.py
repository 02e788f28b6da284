"""Apply Alembic migrations from code (`nebula db upgrade`, `nebula serve`)."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import DBAPIError, OperationalError

from nebula.kernel.db import ensure_sqlite_dir, unavailable
from nebula.kernel.paths import migrations_dir


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # Alembic reads this through ConfigParser, where "%" starts an interpolation.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` up to `revision`. Blocking; run it outside an event loop."""
    ensure_sqlite_dir(url)
    try:
        command.upgrade(alembic_config(url), revision)
    except (OSError, OperationalError, DBAPIError, TimeoutError) as err:
        raise unavailable(url, err) from err


async def upgrade_async(url: str, revision: str = "head") -> None:
    # Alembic's env.py runs its own event loop, so it gets a thread without one.
    await asyncio.to_thread(upgrade, url, revision)
