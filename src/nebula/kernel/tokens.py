"""Random tokens for people and machines: generate, hash for storage, verify in constant time.

Tokens carry 32 random bytes, so a plain SHA-256 is a safe storage hash (nothing to
brute-force); passwords, which people choose, use argon2id in `auth.passwords`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

TOKEN_BYTES: Final = 32
PREFIX_CHARS: Final = 8  # the visible part that names a token in lists and logs


def generate_token(kind: str = "nbl") -> str:
    """`<kind>_<43 urlsafe chars>`; the kind tells a reader what leaked if one does."""
    return f"{kind}_{secrets.token_urlsafe(TOKEN_BYTES)}"


def token_prefix(token: str) -> str:
    kind, _, body = token.partition("_")
    return f"{kind}_{body[:PREFIX_CHARS]}" if body else token[:PREFIX_CHARS]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def verify_token(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass(frozen=True)
class RotatingTokenHash:
    """A stored token that can be rotated without downtime.

    After `rotate`, the new token works at once and the previous one keeps working
    until `previous_valid_until`, so the other side can pick up the new value.
    """

    current_hash: str
    previous_hash: str | None = None
    previous_valid_until: datetime | None = None

    @classmethod
    def issue(cls) -> tuple[str, RotatingTokenHash]:
        token = generate_token("nbn")
        return token, cls(current_hash=hash_token(token))

    def rotate(self, now: datetime, grace: timedelta) -> tuple[str, RotatingTokenHash]:
        token = generate_token("nbn")
        return token, RotatingTokenHash(
            current_hash=hash_token(token),
            previous_hash=self.current_hash,
            previous_valid_until=now + grace,
        )

    def verify(self, token: str, now: datetime) -> bool:
        candidate = hash_token(token)
        current_ok = hmac.compare_digest(candidate, self.current_hash)
        previous_ok = (
            self.previous_hash is not None
            and self.previous_valid_until is not None
            and now < self.previous_valid_until
            and hmac.compare_digest(candidate, self.previous_hash)
        )
        return current_ok or previous_ok
