"""`nebula doctor` checks, run in-process on a fresh data dir (and PostgreSQL when configured)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nebula.kernel.audit import Actor
from nebula.kernel.auth import AuthService
from nebula.kernel.config import Settings, load_settings
from nebula.kernel.db import Database
from nebula.kernel.doctor import Check, run_checks
from nebula.kernel.migrate import upgrade_async
from nebula.kernel.secrets import generate_key, load_keyring
from tests.ci import need_service
from tests.conftest import ADMIN_PASSWORD

STATUSES = {"ok", "info", "warn", "error"}


def by_name(checks: list[Check]) -> dict[str, Check]:
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), f"duplicate check names: {names}"
    assert all(c.status in STATUSES for c in checks)
    assert all(c.status in ("ok", "info") or c.hint for c in checks), "problems need a hint"
    return {c.name: c for c in checks}


@pytest.fixture
def fresh(tmp_path: Path) -> Settings:
    """SQLite in a data dir that does not exist yet."""
    return load_settings(data_dir=tmp_path / "fresh-data")


async def test_fresh_data_dir(fresh: Settings) -> None:
    checks = by_name(await run_checks(fresh))
    assert checks["environment"].status == "ok"
    assert checks["environment"].detail == "local (NEBULA_ENV is set)"
    assert checks["environment file"].status == "ok"
    assert checks["config sources"].status == "info"
    assert "environment (NEBULA_ENV)" in checks["config sources"].detail
    assert checks["data dir"].status == "ok"
    assert checks["data dir"].detail == str(fresh.data_dir)
    key = checks["master key"]
    assert key.status == "warn"
    assert str(fresh.key_file) in key.detail
    assert "nebula serve" in key.hint
    assert "NEBULA_SECRET_KEY" in key.hint
    assert checks["database"].status == "ok"
    assert checks["database"].detail.startswith("sqlite ")
    migrations = checks["migrations"]
    assert migrations.status == "warn"
    assert migrations.detail.startswith("at none, latest is ")
    assert "nebula db upgrade" in migrations.hint
    assert "admin" not in checks  # no schema yet, so no question about accounts
    assert checks["redis"].status == "info"
    assert "NEBULA_REDIS_URL" in checks["redis"].hint
    assert not fresh.key_file.exists(), "doctor must not create the master key"


async def test_migrations_ok_after_upgrade_then_admin(settings: Settings) -> None:
    """On SQLite and (when configured) PostgreSQL, via the shared `settings` fixture."""
    await upgrade_async(settings.main_database_url)
    checks = by_name(await run_checks(settings))
    backend = "sqlite" if settings.main_database_url.startswith("sqlite") else "postgresql"
    assert checks["database"].status == "ok"
    assert checks["database"].detail.startswith(f"{backend} ")
    assert checks["migrations"].status == "ok"
    assert checks["migrations"].detail.startswith("at ")
    head = checks["migrations"].detail.removeprefix("at ")
    admin = checks["admin"]
    assert admin.status == "warn"
    assert admin.detail == "no admin yet"
    assert "nebula user create" in admin.hint

    db = Database(settings.main_database_url)
    try:
        await AuthService(db, settings).create_user(Actor.cli(), "root", ADMIN_PASSWORD, "viewer")
        assert by_name(await run_checks(settings))["admin"].status == "warn"  # not an admin
        await AuthService(db, settings).create_user(Actor.cli(), "boss", ADMIN_PASSWORD, "admin")
    finally:
        await db.dispose()
    after = by_name(await run_checks(settings))
    assert after["admin"].status == "ok"
    assert after["migrations"].detail == f"at {head}"
    assert not any(c.status == "error" for c in after.values())


async def test_key_file_present_is_ok(fresh: Settings) -> None:
    load_keyring(fresh)
    check = by_name(await run_checks(fresh))["master key"]
    assert check.status == "ok"
    assert check.detail == f"key file {fresh.key_file}"


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
async def test_key_file_readable_by_others_is_an_error(fresh: Settings, mode: int) -> None:
    load_keyring(fresh)
    fresh.key_file.chmod(mode)
    check = by_name(await run_checks(fresh))["master key"]
    assert check.status == "error"
    assert "readable by other users" in check.detail
    assert check.hint == f"chmod 600 {fresh.key_file}"


@pytest.mark.parametrize("body", ["not json", '{"active": "x"}', "[]", '{"keys": {"a": 1}}'])
async def test_damaged_key_file_is_an_error(fresh: Settings, body: str) -> None:
    fresh.data_dir.mkdir(parents=True)
    fresh.key_file.write_text(body, encoding="utf-8")
    check = by_name(await run_checks(fresh))["master key"]
    assert check.status == "error"
    assert "damaged" in check.detail
    assert "backup" in check.hint


async def test_master_key_from_environment(tmp_path: Path) -> None:
    good = load_settings(data_dir=tmp_path / "d", secret_key=generate_key())
    check = by_name(await run_checks(good))["master key"]
    assert (check.status, check.detail) == ("ok", "from NEBULA_SECRET_KEY")
    short = load_settings(data_dir=tmp_path / "d", secret_key="too-short")
    check = by_name(await run_checks(short))["master key"]
    assert check.status == "error"
    assert "too short" in check.detail
    assert check.hint


async def test_unknown_environment_is_an_error(
    fresh: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEBULA_ENV", "staging")
    checks = by_name(await run_checks(load_settings(data_dir=fresh.data_dir)))
    assert checks["environment"].status == "error"
    assert "'staging' is unknown" in checks["environment"].detail
    assert "NEBULA_ENV" in checks["environment"].hint


async def test_missing_environment_file_is_a_warning(
    fresh: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "empty-config").mkdir()
    monkeypatch.setenv("NEBULA_CONFIG_DIR", str(tmp_path / "empty-config"))
    check = by_name(await run_checks(load_settings(data_dir=fresh.data_dir)))["environment file"]
    assert check.status == "warn"
    assert "local.yaml not found" in check.detail
    assert "NEBULA_CONFIG_DIR" in check.hint


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root can write anywhere")
async def test_unwritable_data_dir_is_an_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        check = by_name(await run_checks(load_settings(data_dir=locked / "data")))["data dir"]
    finally:
        locked.chmod(0o700)
    assert check.status == "error"
    assert "NEBULA_DATA_DIR" in check.hint


async def test_unreachable_database_is_an_error(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "d", database_url="postgresql://nebula:dbpass123@127.0.0.1:1/nope"
    )
    checks = by_name(await run_checks(settings))
    database = checks["database"]
    assert database.status == "error"
    assert "127.0.0.1:1" in database.detail
    assert "dbpass123" not in database.detail
    assert "NEBULA_DATABASE_URL" in database.hint
    assert "migrations" not in checks
    assert "admin" not in checks


# Redis ------------------------------------------------------------------------------


@pytest.mark.redis
async def test_real_redis_is_ok(fresh: Settings) -> None:
    url = need_service("NEBULA_TEST_REDIS_URL", "Redis")
    settings = load_settings(data_dir=fresh.data_dir, redis_url=url)
    check = by_name(await run_checks(settings))["redis"]
    assert check.status == "ok", check
    assert check.detail.startswith("Redis ")
    assert "?" not in check.detail.split(" at ")[0], "the server version is reported"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1",
        "redis://:redispass123@127.0.0.1:1/0",
        "rediss://user:redispass123@127.0.0.1:1/0",
    ],
)
async def test_unreachable_redis_is_an_error(fresh: Settings, url: str) -> None:
    settings = load_settings(data_dir=fresh.data_dir, redis_url=url)
    check = by_name(await run_checks(settings))["redis"]
    assert check.status == "error"
    assert "127.0.0.1:1" in check.detail
    assert "redispass123" not in check.detail
    assert check.hint == "Start Redis or fix NEBULA_REDIS_URL."


async def test_redis_url_with_wrong_scheme_is_an_error(fresh: Settings) -> None:
    settings = load_settings(data_dir=fresh.data_dir, redis_url="http://127.0.0.1:6379")
    check = by_name(await run_checks(settings))["redis"]
    assert check.status == "error"
    assert "NEBULA_REDIS_URL" in check.hint


def test_check_as_dict_has_the_four_fields() -> None:
    assert Check("a", "warn", "b", "c").as_dict() == {
        "name": "a",
        "status": "warn",
        "detail": "b",
        "hint": "c",
    }
    assert Check("a", "ok", "b").as_dict()["hint"] == ""
