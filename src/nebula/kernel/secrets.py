"""Secrets encrypted at rest with AES-256-GCM.

The master key comes from `NEBULA_SECRET_KEY` or from a key file created on first
use (mode 0600) in the data dir. Every ciphertext names the key that made it, so a
key can be rotated: `rotate_key` re-encrypts every row under a new key. Domains keep
their credentials (OAuth tokens, webhook secrets, ...) in this one table under their
own scope, so one rotation covers them all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets as random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.kernel import audit
from nebula.kernel.audit import Actor
from nebula.kernel.config import Settings
from nebula.kernel.db import Database, utcnow
from nebula.kernel.errors import ConfigurationError, InvalidInput, NotFound, SecretError
from nebula.kernel.models import Secret

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
FORMAT_VERSION: Final = "v1"
MIN_PASSPHRASE_CHARS: Final = 32
NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-:/")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"nebula-key-id:" + key).hexdigest()[:12]


def generate_key() -> str:
    """A new master key, printable: 32 random bytes, urlsafe base64."""
    return _b64(random.token_bytes(KEY_BYTES))


def parse_key(text: str) -> bytes:
    """A 32-byte base64 key as printed by `generate_key`, or a long passphrase."""
    text = text.strip()
    try:
        raw = _unb64(text)
    except ValueError:
        raw = b""
    if len(raw) == KEY_BYTES:
        return raw
    if len(text) < MIN_PASSPHRASE_CHARS:
        raise ConfigurationError(
            "The master key is too short.",
            hint=f"Use {MIN_PASSPHRASE_CHARS}+ characters, or: python -c "
            "'import secrets; print(secrets.token_urlsafe(32))'",
        )
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"nebula-master")
    return hkdf.derive(text.encode("utf-8"))


@dataclass
class Keyring:
    """The active key (encrypts) and every key still able to decrypt."""

    active_id: str
    keys: dict[str, bytes]
    from_environment: bool
    path: Path

    def encrypt(self, plaintext: str, context: str) -> str:
        nonce = random.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.active_id]).encrypt(
            nonce, plaintext.encode("utf-8"), context.encode("utf-8")
        )
        return f"{FORMAT_VERSION}.{self.active_id}.{_b64(nonce + sealed)}"

    def decrypt(self, ciphertext: str, context: str) -> str:
        version, kid, body = [*ciphertext.split(".", 2), "", ""][:3]
        if version != FORMAT_VERSION or not body:
            raise SecretError("A stored secret has an unknown format.")
        key = self.keys.get(kid)
        if key is None:
            raise SecretError(
                f"A stored secret was encrypted with key {kid}, which is not loaded.",
                hint="Set NEBULA_SECRET_KEY (or restore the key file) to the key used last.",
            )
        try:
            raw = _unb64(body)
            plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except (InvalidTag, ValueError) as err:
            raise SecretError("A stored secret failed its integrity check.") from err
        return plain.decode("utf-8")

    def refreshed(self) -> Keyring:
        """The key file as it is now: another process (`nebula secrets rotate-key`) may
        have rotated the key since this keyring was loaded."""
        if self.from_environment:
            return self
        stored = read_key_file(self.path)
        if stored is None or (stored[0] == self.active_id and stored[1] == self.keys):
            return self
        return Keyring(stored[0], stored[1], from_environment=False, path=self.path)

    def save(self, *, exclusive: bool = False) -> None:
        """Write the key file atomically with mode 0600 (never for an environment key).

        `exclusive` refuses to replace an existing file (`FileExistsError`), so two
        processes starting at once cannot each create a different first key.
        """
        if self.from_environment:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{random.token_hex(6)}.tmp")
        body = {"active": self.active_id, "keys": {k: _b64(v) for k, v in self.keys.items()}}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(body, handle)
        try:
            if exclusive:
                os.link(tmp, self.path)
            else:
                os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


def read_key_file(path: Path) -> tuple[str, dict[str, bytes]] | None:
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        keys = {kid: _unb64(value) for kid, value in body["keys"].items()}
        return str(body["active"]), keys
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigurationError(f"The key file {path} is damaged.") from err


def load_keyring(settings: Settings, *, create: bool = True) -> Keyring:
    """The environment key wins; else the key file, created on first use if `create`."""
    path = settings.key_file
    stored = read_key_file(path)
    if settings.secret_key is not None:
        key = parse_key(settings.secret_key.get_secret_value())
        keys = dict(stored[1]) if stored else {}  # older file keys can still decrypt
        keys[key_id(key)] = key
        return Keyring(key_id(key), keys, from_environment=True, path=path)
    if stored:
        return Keyring(stored[0], stored[1], from_environment=False, path=path)
    if not create:
        raise ConfigurationError(
            "No master key yet.", hint="Run `nebula serve` once or set NEBULA_SECRET_KEY."
        )
    key = random.token_bytes(KEY_BYTES)
    keyring = Keyring(key_id(key), {key_id(key): key}, from_environment=False, path=path)
    try:
        keyring.save(exclusive=True)
    except FileExistsError:  # another process created it first: use theirs
        return load_keyring(settings, create=False)
    return keyring


@dataclass(frozen=True)
class SecretInfo:
    scope: str
    name: str
    version: int
    key_id: str
    updated_at: datetime


def _context(scope: str, name: str) -> str:
    # Bound into the ciphertext so a value cannot be moved to another row unnoticed.
    return f"{scope}\x1f{name}"


def validate_name(name: str) -> str:
    if not name or len(name) > 128 or not set(name) <= NAME_CHARS:
        raise InvalidInput(
            f"Invalid secret name {name!r}.",
            hint="Use 1-128 letters, digits and _ . - : /",
        )
    return name


class SecretStore:
    """Named secrets per scope; values are only ever decrypted on request."""

    def __init__(self, db: Database, keyring: Keyring) -> None:
        self.db = db
        self.keyring = keyring

    async def set(self, actor: Actor, name: str, value: str, scope: str = "global") -> int:
        """Create or replace a secret; returns its new version."""
        async with self.db.begin() as session:
            return await self.put(session, actor, name, value, scope)

    async def put(
        self, session: AsyncSession, actor: Actor, name: str, value: str, scope: str = "global"
    ) -> int:
        """`set` inside the caller's transaction, so the secret lands with the change it
        belongs to or not at all."""
        validate_name(name)
        validate_name(scope)
        self.keyring = self.keyring.refreshed()
        if not value:
            raise InvalidInput("A secret value cannot be empty.")
        ciphertext = self.keyring.encrypt(value, _context(scope, name))
        row = await session.scalar(select(Secret).where(Secret.scope == scope, Secret.name == name))
        if row is None:
            row = Secret(scope=scope, name=name, ciphertext=ciphertext, version=1)
            row.key_id = self.keyring.active_id
            session.add(row)
        else:
            row.ciphertext, row.key_id = ciphertext, self.keyring.active_id
            row.version += 1
            row.updated_at = utcnow()
        audit.record(session, actor, "secret.set", f"secret:{scope}/{name}", version=row.version)
        return row.version

    async def get(self, name: str, scope: str = "global") -> str:
        self.keyring = self.keyring.refreshed()
        async with self.db.begin() as session:
            row = await session.scalar(
                select(Secret).where(Secret.scope == scope, Secret.name == name)
            )
        if row is None:
            raise NotFound(f"No secret named {scope}/{name}.")
        return self.keyring.decrypt(row.ciphertext, _context(scope, name))

    async def list(self, scope: str | None = None) -> list[SecretInfo]:
        query = select(Secret).order_by(Secret.scope, Secret.name)
        if scope is not None:
            query = query.where(Secret.scope == scope)
        async with self.db.begin() as session:
            rows = (await session.scalars(query)).all()
        return [SecretInfo(r.scope, r.name, r.version, r.key_id, r.updated_at) for r in rows]

    async def delete(self, actor: Actor, name: str, scope: str = "global") -> None:
        async with self.db.begin() as session:
            row = await session.scalar(
                select(Secret).where(Secret.scope == scope, Secret.name == name)
            )
            if row is None:
                raise NotFound(f"No secret named {scope}/{name}.")
            await session.delete(row)
            audit.record(session, actor, "secret.delete", f"secret:{scope}/{name}")

    async def rotate_key(self, actor: Actor, new_key: bytes | None = None) -> tuple[str, int]:
        """Re-encrypt every secret under a new master key; returns (new key id, count).

        With a key file, the new key is written beside the old one before any row
        changes, so a crash halfway leaves everything decryptable; the old key is
        dropped only after the re-encryption committed. With `NEBULA_SECRET_KEY`, the
        caller must supply the new key and then put it in the environment.
        """
        self.keyring = self.keyring.refreshed()
        if new_key is None:
            if self.keyring.from_environment:
                raise ConfigurationError(
                    "The master key comes from NEBULA_SECRET_KEY, so the new key must be given.",
                    hint="Pipe a new key to `nebula secrets rotate-key --new-key-stdin`.",
                )
            new_key = random.token_bytes(KEY_BYTES)
        new_id = key_id(new_key)
        old = Keyring(self.keyring.active_id, dict(self.keyring.keys), False, self.keyring.path)
        staged = Keyring(
            new_id, {**old.keys, new_id: new_key}, self.keyring.from_environment, self.keyring.path
        )
        staged.save()
        async with self.db.begin() as session:
            rows = (await session.scalars(select(Secret))).all()
            for row in rows:
                context = _context(row.scope, row.name)
                row.ciphertext = staged.encrypt(old.decrypt(row.ciphertext, context), context)
                row.key_id = new_id
            audit.record(session, actor, "secret.rotate_key", f"key:{new_id}", count=len(rows))
        final = Keyring(new_id, {new_id: new_key}, self.keyring.from_environment, old.path)
        final.save()
        self.keyring = final
        return new_id, len(rows)
