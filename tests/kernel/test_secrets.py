"""Secrets at rest: AES-GCM with key ids, bound to their row, rotatable."""

from __future__ import annotations

import os
import stat

import pytest
from sqlalchemy import select, text, update

from nebula.kernel.audit import Actor
from nebula.kernel.config import Settings, load_settings
from nebula.kernel.errors import ConfigurationError, InvalidInput, NotFound, SecretError
from nebula.kernel.models import Secret
from nebula.kernel.secrets import SecretStore, generate_key, load_keyring, parse_key
from nebula.web.runtime import Runtime

ACTOR = Actor.system()


async def test_roundtrip_and_versioning(runtime: Runtime) -> None:
    store = runtime.secrets
    assert await store.set(ACTOR, "openai.key", "sk-first") == 1
    assert await store.set(ACTOR, "openai.key", "sk-second") == 2
    assert await store.get("openai.key") == "sk-second"
    [info] = await store.list()
    assert (info.name, info.scope, info.version) == ("openai.key", "global", 2)
    with pytest.raises(NotFound):
        await store.get("openai.key", scope="discord")


async def test_values_are_not_stored_in_clear(runtime: Runtime) -> None:
    await runtime.secrets.set(ACTOR, "plex.token", "plain-value-123")
    async with runtime.db.begin() as session:
        rows = (await session.execute(text("select * from secrets"))).all()
    assert rows
    assert "plain-value-123" not in repr(rows)


async def test_a_ciphertext_moved_to_another_row_fails(runtime: Runtime) -> None:
    await runtime.secrets.set(ACTOR, "a", "value-a")
    await runtime.secrets.set(ACTOR, "b", "value-b")
    async with runtime.db.begin() as session:
        a = await session.scalar(select(Secret.ciphertext).where(Secret.name == "a"))
        await session.execute(update(Secret).where(Secret.name == "b").values(ciphertext=a))
    with pytest.raises(SecretError):
        await runtime.secrets.get("b")


async def test_tampered_ciphertext_fails_its_integrity_check(runtime: Runtime) -> None:
    await runtime.secrets.set(ACTOR, "a", "value-a")
    async with runtime.db.begin() as session:
        row = await session.scalar(select(Secret))
        assert row is not None
        row.ciphertext = row.ciphertext[:-4] + ("AAAA" if row.ciphertext[-4:] != "AAAA" else "BBBB")
    with pytest.raises(SecretError):
        await runtime.secrets.get("a")


@pytest.mark.parametrize(
    ("name", "value"), [("", "v"), ("has space", "v"), ("x" * 200, "v"), ("ok", "")]
)
async def test_bad_secret_input(runtime: Runtime, name: str, value: str) -> None:
    with pytest.raises(InvalidInput):
        await runtime.secrets.set(ACTOR, name, value)
    assert await runtime.secrets.list() == []


def test_key_file_is_created_private(settings: Settings) -> None:
    keyring = load_keyring(settings)
    assert settings.key_file.is_file()
    if os.name != "nt":
        assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600
    assert load_keyring(settings).active_id == keyring.active_id  # stable across loads


async def test_rotate_key_reencrypts_everything(runtime: Runtime) -> None:
    store = runtime.secrets
    for index in range(3):
        await store.set(ACTOR, f"s{index}", f"value-{index}")
    old_id = store.keyring.active_id
    new_id, count = await store.rotate_key(ACTOR)
    assert (count, new_id != old_id) == (3, True)
    assert {i.key_id for i in await store.list()} == {new_id}
    # A fresh process reading the key file decrypts everything; the old key is gone.
    reloaded = SecretStore(runtime.db, load_keyring(runtime.settings))
    assert reloaded.keyring.active_id == new_id
    assert old_id not in reloaded.keyring.keys
    assert [await reloaded.get(f"s{i}") for i in range(3)] == ["value-0", "value-1", "value-2"]


async def test_environment_key_rotation_needs_the_new_key(runtime: Runtime) -> None:
    env_key = generate_key()
    settings = load_settings(
        data_dir=runtime.settings.data_dir,
        database_url=runtime.settings.database_url,
        secret_key=env_key,
    )
    store = SecretStore(runtime.db, load_keyring(settings))
    await store.set(ACTOR, "x", "value-x")
    with pytest.raises(ConfigurationError):
        await store.rotate_key(ACTOR)
    new_key = generate_key()
    new_id, _ = await store.rotate_key(ACTOR, parse_key(new_key))
    after = load_settings(
        data_dir=runtime.settings.data_dir,
        database_url=runtime.settings.database_url,
        secret_key=new_key,
    )
    rotated = SecretStore(runtime.db, load_keyring(after))
    assert rotated.keyring.active_id == new_id
    assert await rotated.get("x") == "value-x"
    stale = SecretStore(runtime.db, load_keyring(settings))
    with pytest.raises(SecretError):
        await stale.get("x")


@pytest.mark.parametrize("key", ["short", "", "   "])
def test_weak_environment_keys_are_refused(key: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_key(key)


def test_long_passphrases_are_accepted() -> None:
    assert len(parse_key("a passphrase that is long enough to use")) == 32


def test_concurrent_first_runs_agree_on_one_key(settings: Settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(lambda _: load_keyring(settings).active_id, range(16)))
    assert len(ids) == 1
    assert load_keyring(settings).active_id in ids
    assert not list(settings.data_dir.glob("*.tmp"))
