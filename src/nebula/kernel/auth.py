"""Users, passwords, browser sessions, API tokens and login throttling.

Passwords are argon2id hashes. Sessions and API tokens are random tokens of which
only a SHA-256 is stored, so a database dump signs nobody in. There is no default
account: the first admin comes from the Quick Start wizard or `nebula user create`.
"""

from __future__ import annotations

import re
import secrets as random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.kernel import audit
from nebula.kernel.audit import Actor
from nebula.kernel.config import Settings
from nebula.kernel.db import Database, utcnow
from nebula.kernel.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from nebula.kernel.models import ApiToken, LoginFailure, User, UserSession
from nebula.kernel.rbac import Permission, Role, effective_permissions, parse_role, parse_scopes
from nebula.kernel.tokens import generate_token, hash_token, token_prefix

MIN_PASSWORD_CHARS: Final = 12
MAX_PASSWORD_CHARS: Final = 1024  # argon2 cost grows with input; refuse absurd ones
USERNAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_DURATION: Final = timedelta(days=10 * 366)  # keeps now() + duration a valid datetime
TOKEN_TOUCH_INTERVAL: Final = timedelta(minutes=1)  # limits writes for busy API clients
API_TOKEN_KIND: Final = "nbl"  # noqa: S105  (the visible prefix of API tokens)

_hasher = PasswordHasher()  # argon2id with the library's current recommended costs


@dataclass(frozen=True)
class Principal:
    """Who is making a request, and what they may do."""

    user_id: int
    username: str
    role: Role
    via: str  # "session" or "token"
    permissions: frozenset[Permission] = field(default_factory=frozenset)
    csrf_token: str = ""
    session_id: int | None = None

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    def actor(self, ip: str = "") -> Actor:
        return Actor(name=f"user:{self.username}", ip=ip)


def validate_username(username: str) -> str:
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidInput(
            f"Invalid username {username!r}.",
            hint="1-64 characters: letters, digits, _ . - (starting with a letter or digit).",
        )
    return username


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput(f"The password must have at least {MIN_PASSWORD_CHARS} characters.")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidInput(f"The password must have at most {MAX_PASSWORD_CHARS} characters.")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(validate_password(password))


def password_matches(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@cache
def _dummy_hash() -> str:
    """Verifying against this when the user does not exist keeps response times alike,
    so timing does not reveal which usernames exist. Made on first use, not at import."""
    return _hasher.hash(random.token_urlsafe(16))


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    role: Role
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None


@dataclass(frozen=True)
class TokenInfo:
    prefix: str
    username: str
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool


def _user_info(user: User) -> UserInfo:
    return UserInfo(
        user.id,
        user.username,
        Role(user.role),
        user.is_active,
        user.created_at,
        user.last_login_at,
    )


def _principal(
    user: User,
    via: str,
    *,
    scopes: list[str] | None = None,
    csrf_token: str = "",
    session_id: int | None = None,
) -> Principal:
    role = Role(user.role)
    return Principal(
        user_id=user.id,
        username=user.username,
        role=role,
        via=via,
        permissions=effective_permissions(role, scopes),
        csrf_token=csrf_token,
        session_id=session_id,
    )


class AuthService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    # users ---------------------------------------------------------------------

    async def has_admin(self) -> bool:
        query = select(func.count(User.id)).where(User.role == Role.ADMIN, User.is_active)
        async with self.db.begin() as session:
            return bool((await session.execute(query)).scalar_one())

    async def create_user(self, actor: Actor, username: str, password: str, role: str) -> UserInfo:
        parsed_role = parse_role(role)
        validate_username(username)
        password_hash = hash_password(password)
        async with self.db.begin() as session:
            if await session.scalar(select(User.id).where(User.username == username)):
                raise Conflict(f"A user named {username!r} already exists.")
            user = User(username=username, password_hash=password_hash, role=parsed_role)
            session.add(user)
            await session.flush()
            audit.record(session, actor, "user.create", f"user:{username}", role=parsed_role.value)
            return _user_info(user)

    async def create_first_admin(self, actor: Actor, username: str, password: str) -> UserInfo:
        """The Quick Start wizard's one job; refused as soon as any admin exists."""
        if await self.has_admin():
            raise PermissionDenied("An admin already exists; sign in instead.")
        return await self.create_user(actor, username, password, Role.ADMIN)

    async def list_users(self) -> list[UserInfo]:
        async with self.db.begin() as session:
            users = (await session.scalars(select(User).order_by(User.username))).all()
        return [_user_info(u) for u in users]

    async def get_user(self, username: str) -> UserInfo:
        async with self.db.begin() as session:
            return _user_info(await self._get_user(session, username))

    async def set_password(self, actor: Actor, username: str, password: str) -> None:
        """Change a password and sign that user out everywhere."""
        password_hash = hash_password(password)
        async with self.db.begin() as session:
            user = await self._get_user(session, username)
            user.password_hash = password_hash
            user.password_changed_at = utcnow()
            await session.execute(
                update(UserSession)
                .where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            audit.record(session, actor, "user.set_password", f"user:{username}")

    async def set_role(self, actor: Actor, username: str, role: str) -> UserInfo:
        parsed_role = parse_role(role)
        async with self.db.begin() as session:
            user = await self._get_user(session, username)
            if user.role == Role.ADMIN and parsed_role != Role.ADMIN:
                admins = select(func.count(User.id)).where(User.role == Role.ADMIN, User.is_active)
                if (await session.execute(admins)).scalar_one() <= 1:
                    raise Conflict("This is the last admin; make another admin first.")
            user.role = parsed_role
            audit.record(session, actor, "user.set_role", f"user:{username}", role=parsed_role)
            return _user_info(user)

    @staticmethod
    async def _get_user(session: AsyncSession, username: str) -> User:
        user = await session.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"No user named {username!r}.")
        return user

    # sign-in -------------------------------------------------------------------

    async def authenticate(self, username: str, password: str, ip: str) -> UserInfo:
        """Check a password, with throttling per username and address."""
        window_start = utcnow() - timedelta(seconds=self.settings.login_window_s)
        async with self.db.begin() as session:
            failures = (
                await session.scalars(
                    select(LoginFailure.at)
                    .where(
                        LoginFailure.username == username,
                        LoginFailure.ip == ip,
                        LoginFailure.at > window_start,
                    )
                    .order_by(LoginFailure.at)
                )
            ).all()
            if len(failures) >= self.settings.login_max_failures:
                oldest = failures[-self.settings.login_max_failures]
                retry = oldest + timedelta(seconds=self.settings.login_window_s) - utcnow()
                audit.record(
                    session,
                    Actor(f"user:{username}", ip),
                    "auth.login",
                    "",
                    "denied",
                    reason="throttled",
                )
                raise RateLimited(max(1, int(retry.total_seconds()) + 1))
            user = await session.scalar(select(User).where(User.username == username))
            ok = password_matches(user.password_hash if user else _dummy_hash(), password)
            if user is None or not ok or not user.is_active:
                session.add(LoginFailure(username=username[:64], ip=ip[:64]))
                audit.record(session, Actor(f"user:{username}", ip), "auth.login", "", "denied")
                failed = True
            else:
                await session.execute(
                    delete(LoginFailure).where(
                        LoginFailure.username == username, LoginFailure.ip == ip
                    )
                )
                if _hasher.check_needs_rehash(user.password_hash):
                    user.password_hash = _hasher.hash(password)
                audit.record(session, Actor(f"user:{username}", ip), "auth.login")
                failed = False
        if failed or user is None:
            raise Unauthenticated("Wrong username or password.")
        return _user_info(user)

    async def create_session(self, user: UserInfo, ip: str, user_agent: str) -> str:
        """Start a browser session; returns the cookie value (never stored as is)."""
        token = generate_token("nbs")
        async with self.db.begin() as session:
            await session.execute(
                update(User).where(User.id == user.id).values(last_login_at=utcnow())
            )
            session.add(
                UserSession(
                    token_hash=hash_token(token),
                    user_id=user.id,
                    csrf_token=random.token_urlsafe(32),
                    expires_at=utcnow() + timedelta(hours=self.settings.session_ttl_hours),
                    ip=ip[:64],
                    user_agent=user_agent[:255],
                )
            )
        return token

    async def resolve_session(self, token: str) -> Principal | None:
        now = utcnow()
        async with self.db.begin() as session:
            row = await session.scalar(
                select(UserSession).where(UserSession.token_hash == hash_token(token))
            )
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                return None
            if not row.user.is_active:
                return None
            if now - row.last_seen_at > TOKEN_TOUCH_INTERVAL:
                row.last_seen_at = now
            return _principal(row.user, "session", csrf_token=row.csrf_token, session_id=row.id)

    async def end_session(self, actor: Actor, token: str) -> None:
        async with self.db.begin() as session:
            await session.execute(
                update(UserSession)
                .where(
                    UserSession.token_hash == hash_token(token), UserSession.revoked_at.is_(None)
                )
                .values(revoked_at=utcnow())
            )
            audit.record(session, actor, "auth.logout")

    # API tokens ----------------------------------------------------------------

    async def create_api_token(
        self,
        actor: Actor,
        username: str,
        *,
        name: str = "",
        scopes: list[str] | None = None,
        expires_in: timedelta | None = None,
    ) -> tuple[str, TokenInfo]:
        """Issue a bearer token; the plain value is returned here and never again."""
        checked_scopes = parse_scopes(scopes or [])
        token = generate_token(API_TOKEN_KIND)
        async with self.db.begin() as session:
            user = await self._get_user(session, username)
            row = ApiToken(
                user_id=user.id,
                name=name[:64],
                prefix=token_prefix(token),
                token_hash=hash_token(token),
                scopes=checked_scopes,
                expires_at=utcnow() + expires_in if expires_in else None,
            )
            session.add(row)
            await session.flush()
            audit.record(session, actor, "token.create", f"token:{row.prefix}", user=username)
            return token, self._token_info(row, username)

    async def revoke_api_token(self, actor: Actor, prefix: str) -> None:
        async with self.db.begin() as session:
            row = await session.scalar(select(ApiToken).where(ApiToken.prefix == prefix))
            if row is None:
                raise NotFound(f"No API token with prefix {prefix!r}.")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            audit.record(session, actor, "token.revoke", f"token:{prefix}")

    async def list_api_tokens(self) -> list[TokenInfo]:
        async with self.db.begin() as session:
            rows = (await session.scalars(select(ApiToken).order_by(ApiToken.id))).all()
            return [self._token_info(r, r.user.username) for r in rows]

    async def resolve_api_token(self, token: str) -> Principal | None:
        if not token.startswith(f"{API_TOKEN_KIND}_"):
            return None  # another kind of token (an agent's, say): no lookup needed
        now = utcnow()
        async with self.db.begin() as session:
            row = await session.scalar(
                select(ApiToken).where(ApiToken.token_hash == hash_token(token))
            )
            if row is None or row.revoked_at is not None or not row.user.is_active:
                return None
            if row.expires_at is not None and row.expires_at <= now:
                return None
            if row.last_used_at is None or now - row.last_used_at > TOKEN_TOUCH_INTERVAL:
                row.last_used_at = now
            return _principal(row.user, "token", scopes=row.scopes)

    @staticmethod
    def _token_info(row: ApiToken, username: str) -> TokenInfo:
        return TokenInfo(
            prefix=row.prefix,
            username=username,
            name=row.name,
            scopes=list(row.scopes),
            created_at=row.created_at,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            revoked=row.revoked_at is not None,
        )


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `2w` -> timedelta; a clear error otherwise."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*([mhdw])\s*", text)
    if not match:
        raise InvalidInput(f"Invalid duration {text!r}.", hint="Use a number and m, h, d or w: 30d")
    amount, unit = int(match.group(1)), match.group(2)
    if amount == 0:
        raise InvalidInput("A duration must be longer than zero.")
    duration = {
        "m": timedelta(minutes=amount),
        "h": timedelta(hours=amount),
        "d": timedelta(days=amount),
        "w": timedelta(weeks=amount),
    }[unit]
    if duration > MAX_DURATION:
        raise InvalidInput(
            f"A duration can be at most {MAX_DURATION.days} days.", hint="Use 52w for a year."
        )
    return duration
