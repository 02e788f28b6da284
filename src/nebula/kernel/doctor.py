"""Checks behind `nebula doctor`: each problem comes with a one-line fix."""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import asdict, dataclass
from typing import Literal

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from redis.asyncio import Redis
from redis.exceptions import RedisError

from nebula.kernel.auth import AuthService
from nebula.kernel.config import Settings, redact_url, setting_sources
from nebula.kernel.db import Database
from nebula.kernel.errors import NebulaError
from nebula.kernel.migrate import alembic_config
from nebula.kernel.secrets import load_keyring, read_key_file

Status = Literal["ok", "info", "warn", "error"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _environment(settings: Settings) -> list[Check]:
    checks = [Check("environment", "ok", f"{settings.env} ({settings.env_reason})")]
    if "unknown" in settings.env_reason:
        checks[0] = Check(
            "environment",
            "error",
            settings.env_reason,
            "Set NEBULA_ENV to linode, ubuntu-home, windows-vm, replit or local.",
        )
    if settings.environment_file.is_file():
        checks.append(Check("environment file", "ok", str(settings.environment_file)))
    else:
        checks.append(
            Check(
                "environment file",
                "warn",
                f"{settings.environment_file} not found",
                "Set NEBULA_CONFIG_DIR to the folder with <env>.yaml files.",
            )
        )
    by_source: dict[str, list[str]] = {}
    for name, source in setting_sources(settings).items():
        if source not in ("default", "detected"):
            by_source.setdefault(source, []).append(name)
    detail = (
        "; ".join(
            f"{source}: {', '.join(sorted(names))}" for source, names in sorted(by_source.items())
        )
        or "defaults only"
    )
    checks.append(Check("config sources", "info", detail))
    return checks


def _data_dir(settings: Settings) -> Check:
    path = settings.data_dir
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if os.access(probe, os.W_OK):
        return Check("data dir", "ok", str(path))
    return Check(
        "data dir",
        "error",
        f"{path} is not writable",
        "Set NEBULA_DATA_DIR to a folder this user can write.",
    )


async def _database(settings: Settings, db: Database) -> list[Check]:
    try:
        info = await db.info()
    except NebulaError as err:
        return [Check("database", "error", err.message, err.hint or "")]
    checks = [Check("database", "ok", f"{info.backend} {info.version} at {info.url}")]
    script = ScriptDirectory.from_config(alembic_config(settings.main_database_url))
    async with db.engine.connect() as conn:
        current = await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
    head = script.get_current_head()
    if current == head:
        checks.append(Check("migrations", "ok", f"at {head}"))
    else:
        checks.append(
            Check(
                "migrations",
                "warn",
                f"at {current or 'none'}, latest is {head}",
                "Run `nebula db upgrade` (nebula serve also does it on start).",
            )
        )
        return checks
    if await AuthService(db, settings).has_admin():
        checks.append(Check("admin", "ok", "an admin account exists"))
    else:
        checks.append(
            Check(
                "admin",
                "warn",
                "no admin yet",
                "Open the dashboard or run `nebula user create NAME --role admin`.",
            )
        )
    return checks


async def _redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check(
            "redis",
            "info",
            "not configured: events stay in this process",
            "Set NEBULA_REDIS_URL to share events across processes.",
        )
    try:
        client = Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    except ValueError as err:
        return Check(
            "redis",
            "error",
            f"{redact_url(settings.redis_url)}: {err}",
            "Use a redis://, rediss:// or unix:// URL in NEBULA_REDIS_URL.",
        )
    try:
        async with asyncio.timeout(5):
            await client.ping()
            version = (await client.info("server")).get("redis_version", "?")
    except (RedisError, OSError, TimeoutError) as err:
        return Check(
            "redis",
            "error",
            f"{redact_url(settings.redis_url)}: {err}",
            "Start Redis or fix NEBULA_REDIS_URL.",
        )
    finally:
        await client.aclose()
    return Check("redis", "ok", f"Redis {version} at {redact_url(settings.redis_url)}")


def _master_key(settings: Settings) -> Check:
    if settings.secret_key is not None:
        try:
            load_keyring(settings, create=False)
        except NebulaError as err:
            return Check("master key", "error", err.message, err.hint or "")
        return Check("master key", "ok", "from NEBULA_SECRET_KEY")
    path = settings.key_file
    try:
        stored = read_key_file(path)
    except NebulaError as err:
        return Check("master key", "error", err.message, "Restore the key file from a backup.")
    if stored is None:
        return Check(
            "master key",
            "warn",
            f"no key file yet at {path}",
            "It is created on first `nebula serve`, or set NEBULA_SECRET_KEY.",
        )
    if os.name != "nt" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        return Check(
            "master key", "error", f"{path} is readable by other users", f"chmod 600 {path}"
        )
    return Check("master key", "ok", f"key file {path}")


async def run_checks(settings: Settings) -> list[Check]:
    checks = [*_environment(settings), _data_dir(settings), _master_key(settings)]
    db = Database(settings.main_database_url)
    try:
        checks += await _database(settings, db)
    finally:
        await db.dispose()
    checks.append(await _redis(settings))
    return checks
