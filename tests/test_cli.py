"""The `nebula` console script, run as a real subprocess: its outside contract.

One `nebula serve` is shared by the tests of this module (started on an empty data dir);
commands that need their own state get their own data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from nebula import __version__
from nebula.kernel.config import load_settings
from nebula.kernel.db import Database
from nebula.kernel.errors import SecretError
from nebula.kernel.secrets import SecretStore, generate_key, load_keyring, read_key_file
from nebula.kernel.tokens import hash_token, token_prefix
from tests.cli_support import (
    Cli,
    Server,
    describe,
    failed_cleanly,
    free_port,
    start_server,
    stop_server,
    succeeded,
)

TOKEN_PATTERN = re.compile(r"nbl_[A-Za-z0-9_-]{43}")
# Random per run, so a grep for them can only hit if they really leaked.
ADMIN_PASSWORD = f"admin-pass-{secrets.token_hex(8)}"
DOWN_DB = "postgresql://postgres@127.0.0.1:1/nope"


@dataclass
class Served:
    cli: Cli
    server: Server
    user_create: subprocess.CompletedProcess[str]
    token_create: subprocess.CompletedProcess[str]

    @property
    def token(self) -> str:
        return self.token_create.stdout.splitlines()[-1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`nebula serve` on an empty data dir; then an admin and a token made with the CLI."""
    home = tmp_path_factory.mktemp("served")
    data_dir = home / "data"
    data_dir.mkdir()
    cli = Cli(home, data_dir)
    server = start_server(cli, home, NEBULA_LOG_LEVEL="DEBUG")
    try:
        user_create = cli(
            "user", "create", "admin", "--role", "admin", "--password-stdin",
            stdin=f"{ADMIN_PASSWORD}\n",
        )  # fmt: skip
        token_create = cli("token", "create", "--user", "admin")
        yield Served(cli, server, user_create, token_create)
    finally:
        stop_server(server)


async def read_secret(data_dir: Path, name: str, scope: str = "global", **overrides: str) -> str:
    """Decrypt a stored secret with the kernel API, as a running process would."""
    settings = load_settings(data_dir=data_dir, **overrides)
    db = Database(settings.main_database_url)
    try:
        return await SecretStore(db, load_keyring(settings, create=False)).get(name, scope)
    finally:
        await db.dispose()


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# First run: user, token, serve -----------------------------------------------------


def test_user_create_then_token_create_prints_the_token_last(served: Served) -> None:
    created = succeeded(served.user_create)
    assert created.stdout == "Created user admin (admin).\n"
    made = succeeded(served.token_create)
    last = made.stdout.splitlines()[-1]
    assert TOKEN_PATTERN.fullmatch(last), made.stdout
    assert f"Token {token_prefix(last)} for admin" in made.stderr
    assert "not shown again" in made.stderr
    assert last not in made.stderr


def test_serve_on_an_empty_data_dir_creates_a_private_key_file(served: Served) -> None:
    key_file = served.cli.data_dir / "secret.key"
    assert read_key_file(key_file) is not None
    if os.name != "nt":
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (served.cli.data_dir / "nebula.db").is_file()


def test_the_cli_token_works_against_the_server(served: Served) -> None:
    with served.server.client() as anonymous:
        health = anonymous.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        me = anonymous.get("/api/v1/me")
        assert me.status_code == 401
        assert me.json()["error"]["code"] == "unauthenticated"
    with served.server.client(served.token) as client:
        me = client.get("/api/v1/me")
        assert me.status_code == 200, me.text
        body = me.json()
        assert (body["username"], body["role"], body["via"]) == ("admin", "admin", "token")
        assert "users:write" in body["permissions"]
        system = client.get("/api/v1/system")
        assert system.status_code == 200, system.text
        stats = system.json()
        assert 0.0 <= stats["cpu_percent"] <= 100.0
        assert stats["memory"]["total"] > 0
        assert stats["disk"]["total"] > 0
        assert isinstance(stats["uptime_s"], int)
        assert stats["uptime_s"] >= 0


def test_version(tmp_path: Path) -> None:
    cli = Cli(tmp_path, tmp_path / "data")
    assert succeeded(cli("version")).stdout == f"{__version__}\n"
    assert json.loads(succeeded(cli("version", "--json")).stdout) == {"version": __version__}
    assert __version__ != "0.0.0+source"


def test_user_list_json(served: Served) -> None:
    result = succeeded(served.cli("user", "list", "--json"))
    users = {u["username"]: u for u in json.loads(result.stdout)}
    admin = users["admin"]
    assert set(admin) == {"username", "role", "is_active", "created_at", "last_login_at"}
    assert (admin["role"], admin["is_active"]) == ("admin", True)
    assert parse_time(admin["created_at"]) <= datetime.now(UTC)
    assert "argon2" not in result.stdout


def test_token_create_json_and_a_scoped_expiring_token(served: Served) -> None:
    plain = json.loads(succeeded(served.cli("token", "create", "--user", "admin", "--json")).stdout)
    assert set(plain) == {"token", "prefix", "user", "scopes", "expires_at"}
    assert TOKEN_PATTERN.fullmatch(plain["token"])
    assert plain["prefix"] == token_prefix(plain["token"])
    assert (plain["user"], plain["scopes"], plain["expires_at"]) == ("admin", [], None)

    before = datetime.now(UTC)
    scoped = json.loads(
        succeeded(
            served.cli(
                "token", "create", "--user", "admin", "--json",
                "--expires", "30d", "--scope", "system:read", "--name", "grafana",
            )
        ).stdout
    )  # fmt: skip
    assert scoped["scopes"] == ["system:read"]
    expires = parse_time(scoped["expires_at"])
    assert before + timedelta(days=30) <= expires <= datetime.now(UTC) + timedelta(days=30)

    with served.server.client(plain["token"]) as client:
        assert client.get("/api/v1/users").status_code == 200
    with served.server.client(scoped["token"]) as client:
        me = client.get("/api/v1/me").json()
        assert me["permissions"] == ["system:read"]
        assert client.get("/api/v1/system").status_code == 200
        denied = client.get("/api/v1/users")
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "forbidden"


def test_token_revoke_then_list(served: Served) -> None:
    made = json.loads(
        succeeded(
            served.cli("token", "create", "--user", "admin", "--json", "--name", "doomed")
        ).stdout
    )
    with served.server.client(made["token"]) as client:
        assert client.get("/api/v1/me").status_code == 200
        revoked = succeeded(served.cli("token", "revoke", made["prefix"]))
        assert revoked.stdout == f"Revoked {made['prefix']}.\n"
        after = client.get("/api/v1/me")
        assert after.status_code == 401
        assert "revoked" in after.json()["error"]["message"]

    listed = succeeded(served.cli("token", "list", "--json"))
    tokens = {t["prefix"]: t for t in json.loads(listed.stdout)}
    doomed = tokens[made["prefix"]]
    assert set(doomed) == {
        "prefix", "username", "name", "scopes", "created_at", "expires_at", "last_used_at",
        "revoked",
    }  # fmt: skip
    assert (doomed["username"], doomed["name"], doomed["revoked"]) == ("admin", "doomed", True)
    assert doomed["last_used_at"] is not None, "the server records use of the token"
    assert tokens[token_prefix(served.token)]["revoked"] is False
    assert made["token"] not in listed.stdout
    assert served.token not in listed.stdout
    with served.server.client(served.token) as client:
        assert client.get("/api/v1/me").status_code == 200


# Secrets -------------------------------------------------------------------------


async def test_secrets_set_list_rotate_key(tmp_path: Path) -> None:
    cli = Cli(tmp_path, tmp_path / "data")
    first, second = f"first-{secrets.token_hex(8)}", f"second-{secrets.token_hex(8)}"
    pem = f"-----BEGIN KEY-----\n{secrets.token_hex(16)}\n  indented line\n-----END KEY-----\n"
    outputs: list[str] = []

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        result = succeeded(cli(*args, stdin=stdin))
        outputs.append(result.stdout + result.stderr)
        return result

    stored = run("secrets", "set", "discord.token", "--value-stdin", stdin=f"{first}\n")
    assert stored.stdout == "Stored global/discord.token (version 1).\n"
    stored = run("secrets", "set", "discord.token", "--value-stdin", stdin=f"{second}\r\n")
    assert stored.stdout == "Stored global/discord.token (version 2).\n"
    stored = run("secrets", "set", "obs.key", "--scope", "stream", "--value-stdin", stdin=pem)
    assert stored.stdout == "Stored stream/obs.key (version 1).\n"

    before = json.loads(run("secrets", "list", "--json").stdout)
    assert [(s["scope"], s["name"], s["version"]) for s in before] == [
        ("global", "discord.token", 2),
        ("stream", "obs.key", 1),
    ]
    assert all(set(s) == {"scope", "name", "version", "key_id", "updated_at"} for s in before)
    old_ids = {s["key_id"] for s in before}
    assert len(old_ids) == 1

    rotated = run("secrets", "rotate-key")
    match = re.fullmatch(r"Re-encrypted 2 secret\(s\) under key ([0-9a-f]{12})\.\n", rotated.stdout)
    assert match, rotated.stdout
    new_id = match.group(1)
    assert new_id not in old_ids
    after = json.loads(run("secrets", "list", "--json").stdout)
    assert {s["key_id"] for s in after} == {new_id}
    assert [s["version"] for s in after] == [2, 1]
    stored_keys = read_key_file(tmp_path / "data" / "secret.key")
    assert stored_keys is not None
    assert (stored_keys[0], set(stored_keys[1])) == (new_id, {new_id})

    assert await read_secret(tmp_path / "data", "discord.token") == second
    assert await read_secret(tmp_path / "data", "obs.key", "stream") == pem.rstrip("\n")
    for output in outputs:
        for value in (first, second, pem.splitlines()[1]):
            assert value not in output


async def test_rotate_key_with_environment_key(tmp_path: Path) -> None:
    old_key, new_key = generate_key(), generate_key()
    value = f"value-{secrets.token_hex(8)}"
    cli = Cli(tmp_path, tmp_path / "data", env={"NEBULA_SECRET_KEY": old_key})
    succeeded(cli("secrets", "set", "plex.token", "--value-stdin", stdin=value))

    error = failed_cleanly(cli("secrets", "rotate-key"))
    assert "NEBULA_SECRET_KEY" in error
    assert "--new-key-stdin" in error
    assert not (tmp_path / "data" / "secret.key").exists(), "an environment key is never written"
    assert await read_secret(tmp_path / "data", "plex.token", secret_key=old_key) == value

    rotated = succeeded(cli("secrets", "rotate-key", "--new-key-stdin", stdin=f"{new_key}\n"))
    assert "Re-encrypted 1 secret(s)" in rotated.stdout
    assert "Now set NEBULA_SECRET_KEY" in rotated.stdout
    assert new_key not in rotated.stdout + rotated.stderr
    assert await read_secret(tmp_path / "data", "plex.token", secret_key=new_key) == value
    with pytest.raises(SecretError):
        await read_secret(tmp_path / "data", "plex.token", secret_key=old_key)


# Bad input -------------------------------------------------------------------------


BAD_INPUT = [
    pytest.param(
        ["user", "create", "bob", "--role", "wizard", "--password-stdin"],
        "a-long-enough-password\n",
        {},
        "Unknown role 'wizard'",
        id="unknown-role",
    ),
    pytest.param(
        ["user", "create", "bob", "--password-stdin"],
        "short-pw\n",
        {},
        "at least 12 characters",
        id="short-password",
    ),
    pytest.param(
        ["user", "create", "bob", "--password-stdin"],
        "",
        {},
        "No password on standard input",
        id="empty-stdin-password",
    ),
    pytest.param(
        ["user", "create", "bob", "--password-stdin"],
        "\n\n",
        {},
        "No password on standard input",
        id="newline-only-password",
    ),
    pytest.param(
        ["user", "create", "bob"],
        "",
        {},
        "--password-stdin",
        id="no-terminal-for-prompt",
    ),
    pytest.param(
        ["user", "create", "admin", "--role", "admin", "--password-stdin"],
        "another-long-password\n",
        {},
        "A user named 'admin' already exists",
        id="duplicate-user",
    ),
    pytest.param(
        ["user", "create", "bad name", "--password-stdin"],
        "a-long-enough-password\n",
        {},
        "Invalid username 'bad name'",
        id="invalid-username",
    ),
    pytest.param(
        ["token", "create", "--user", "ghost"], "", {}, "No user named 'ghost'", id="no-user"
    ),
    pytest.param(
        ["token", "create", "--user", "admin", "--expires", "30x"],
        "",
        {},
        "Invalid duration '30x'",
        id="expires-30x",
    ),
    pytest.param(
        ["token", "create", "--user", "admin", "--expires", "0d"],
        "",
        {},
        "longer than zero",
        id="expires-zero",
    ),
    pytest.param(
        ["token", "create", "--user", "admin", "--expires", "999999w"],
        "",
        {},
        "",
        id="expires-beyond-year-9999",
    ),
    pytest.param(
        ["token", "create", "--user", "admin", "--scope", "root"],
        "",
        {},
        "Unknown scope(s): root",
        id="unknown-scope",
    ),
    pytest.param(
        ["token", "revoke", "nbl_nosuchxx"],
        "",
        {},
        "No API token with prefix 'nbl_nosuchxx'",
        id="revoke-unknown",
    ),
    pytest.param(
        ["secrets", "set", "discord.token"],
        "value-on-stdin\n",
        {},
        "--value-stdin",
        id="secret-without-value-stdin",
    ),
    pytest.param(
        ["secrets", "set", "bad name!", "--value-stdin"],
        "value-on-stdin\n",
        {},
        "Invalid secret name 'bad name!'",
        id="invalid-secret-name",
    ),
    pytest.param(
        ["secrets", "set", "ok.name", "--scope", "a*b", "--value-stdin"],
        "value-on-stdin\n",
        {},
        "Invalid secret name 'a*b'",
        id="invalid-secret-scope",
    ),
    pytest.param(
        ["secrets", "set", "discord.token", "--value-stdin"],
        "",
        {},
        "No secret value on standard input",
        id="empty-secret-value",
    ),
    pytest.param(
        ["secrets", "rotate-key", "--new-key-stdin"],
        "too-short-key\n",
        {},
        "too short",
        id="short-new-master-key",
    ),
    pytest.param(
        ["user", "list"],
        "",
        {"NEBULA_DATABASE_URL": "mysql://root:hunter2pw@db/nebula"},
        "Unsupported database URL scheme in 'mysql://root:***@db/nebula'",
        id="database-url-scheme",
    ),
    pytest.param(
        ["user", "list"],
        "",
        {"NEBULA_PORT": "eighty"},
        "NEBULA_PORT: Input should be a valid integer",
        id="port-not-a-number",
    ),
    pytest.param(
        ["user", "list"],
        "",
        {"NEBULA_PORTS": "dashboard=1"},
        "NEBULA_PORTS",
        id="ports-not-json",
    ),
]


@pytest.fixture(scope="module")
def bad_input_results(served: Served) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every row of BAD_INPUT, run in parallel once (each start costs about a second)."""

    def run(values: tuple[object, ...]) -> subprocess.CompletedProcess[str]:
        args, stdin, env, _ = values
        assert isinstance(args, list)
        assert isinstance(stdin, str)
        assert isinstance(env, dict)
        return served.cli(*args, stdin=stdin, env=env)

    ids = [str(case.id) for case in BAD_INPUT]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(ids, pool.map(run, [case.values for case in BAD_INPUT]), strict=True))
    return results


@pytest.mark.parametrize(("args", "stdin", "env", "expected"), BAD_INPUT)
def test_bad_input_fails_with_one_error_line(
    request: pytest.FixtureRequest,
    bad_input_results: dict[str, subprocess.CompletedProcess[str]],
    args: list[str],
    stdin: str,
    env: dict[str, str],
    expected: str,
) -> None:
    result = bad_input_results[request.node.callspec.id]
    assert result.args[1:] == args
    line = failed_cleanly(result)
    assert expected in line
    if stdin.strip():
        assert stdin.strip() not in result.stderr, "input is never echoed back"
    assert "hunter2pw" not in result.stderr


@pytest.mark.parametrize(
    ("args", "url"),
    [
        pytest.param(["serve", "--host", "127.0.0.1"], DOWN_DB, id="serve"),
        pytest.param(["db", "upgrade"], DOWN_DB, id="db-upgrade"),
        pytest.param(
            ["db", "upgrade"],
            "postgresql://nebula:dbpass-42x@127.0.0.1:1/nope",
            id="db-upgrade-password-redacted",
        ),
    ],
)
def test_database_down_at_start(tmp_path: Path, args: list[str], url: str) -> None:
    cli = Cli(tmp_path, tmp_path / "data", env={"NEBULA_DATABASE_URL": url})
    if args[0] == "serve":
        args = [*args, "--port", str(free_port())]
    started = time.monotonic()
    result = cli(*args, timeout=30)
    elapsed = time.monotonic() - started
    line = failed_cleanly(result)
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert "database" in line.lower()
    assert "127.0.0.1:1" in line
    assert "dbpass-42x" not in result.stderr


# Doctor ----------------------------------------------------------------------------


def doctor_checks(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    assert "Traceback" not in result.stdout + result.stderr, describe(result)
    checks = json.loads(result.stdout)
    assert isinstance(checks, list)
    assert checks
    for check in checks:
        assert set(check) == {"name", "status", "detail", "hint"}, check
        assert check["status"] in {"ok", "info", "warn", "error"}, check
    return {c["name"]: c for c in checks}


def test_doctor_json_on_a_fresh_data_dir(tmp_path: Path) -> None:
    result = Cli(tmp_path, tmp_path / "fresh")("doctor", "--json")
    assert result.returncode == 0, describe(result)
    checks = doctor_checks(result)
    assert {"environment", "data dir", "master key", "database", "migrations", "redis"} <= set(
        checks
    )
    statuses = {c["status"] for c in checks.values()}
    assert "error" not in statuses
    assert "warn" in statuses
    assert checks["master key"]["status"] == "warn"
    assert checks["migrations"]["status"] == "warn"
    assert checks["redis"]["status"] == "info"


def test_doctor_json_with_unreachable_redis(tmp_path: Path) -> None:
    cli = Cli(tmp_path, tmp_path / "fresh", env={"NEBULA_REDIS_URL": "redis://127.0.0.1:1"})
    result = cli("doctor", "--json")
    assert result.returncode == 1, describe(result)
    checks = doctor_checks(result)
    redis = checks["redis"]
    assert redis["status"] == "error"
    assert "127.0.0.1:1" in redis["detail"]
    assert redis["hint"]
    assert [c["name"] for c in checks.values() if c["status"] == "error"] == ["redis"]


def test_doctor_json_with_a_non_redis_url(tmp_path: Path) -> None:
    cli = Cli(tmp_path, tmp_path / "fresh", env={"NEBULA_REDIS_URL": "http://127.0.0.1:6379"})
    result = cli("doctor", "--json")
    assert result.returncode == 1, describe(result)
    assert doctor_checks(result)["redis"]["status"] == "error"


# Nothing in clear: database dump and server logs -------------------------------------


async def database_dump(url: str, data_dir: Path) -> tuple[str, bytes]:
    """Every byte and every value the database holds, as text (and raw bytes for SQLite)."""
    if url.startswith("sqlite"):
        path = data_dir / "nebula.db"
        raw = b"".join(
            p.read_bytes() for p in (path, path.with_name("nebula.db-wal")) if p.exists()
        )
        with contextlib.closing(sqlite3.connect(path)) as connection:
            text = "\n".join(connection.iterdump())
        return text, raw
    plain = re.sub(r"^postgresql\+asyncpg://", "postgresql://", url)
    parts: list[str] = []
    if shutil.which("pg_dump"):
        dump = await asyncio.create_subprocess_exec(
            "pg_dump",
            "--dbname",
            plain,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, _ = await asyncio.wait_for(dump.communicate(), timeout=60)
        if dump.returncode == 0:  # a client older than the server cannot dump it
            parts.append(stdout.decode())
    connection = await asyncpg.connect(plain)
    try:
        tables = await connection.fetch(
            "select table_name from information_schema.tables where table_schema = 'public'"
        )
        for table in tables:
            rows = await connection.fetch(f'select t::text from public."{table[0]}" t')  # noqa: S608
            parts.extend(row[0] for row in rows)
    finally:
        await connection.close()
    text = "\n".join(parts)
    return text, text.encode()


async def test_database_dump_holds_no_plaintext(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cli = Cli(tmp_path, data_dir, env={"NEBULA_DATABASE_URL": db_url})
    passwords = [f"pw-{name}-{secrets.token_hex(8)}" for name in ("admin", "vera", "vera2")]
    values = [f"secret-{n}-{secrets.token_hex(8)}" for n in range(3)]

    succeeded(
        cli("user", "create", "admin", "--role", "admin", "--password-stdin", stdin=passwords[0])
    )
    succeeded(cli("user", "create", "vera", "--password-stdin", stdin=passwords[1]))
    succeeded(cli("user", "set-password", "vera", "--password-stdin", stdin=passwords[2]))
    plain_token = succeeded(cli("token", "create", "--user", "admin")).stdout.splitlines()[-1]
    scoped = json.loads(
        succeeded(
            cli("token", "create", "--user", "vera", "--scope", "system:read", "--json")
        ).stdout
    )
    succeeded(cli("secrets", "set", "discord.token", "--value-stdin", stdin=values[0]))
    succeeded(
        cli("secrets", "set", "obs.password", "--scope", "stream", "--value-stdin", stdin=values[1])
    )
    succeeded(cli("secrets", "rotate-key"))
    succeeded(cli("secrets", "set", "discord.token", "--value-stdin", stdin=values[2]))

    text, raw = await database_dump(db_url, data_dir)
    # The dump is real: it holds the rows, with hashes and prefixes instead of values.
    for present in ("discord.token", "obs.password", "vera", "$argon2id$", hash_token(plain_token)):
        assert present in text, present
    assert token_prefix(scoped["token"]) in text
    tokens = [plain_token, scoped["token"]]
    needles = [*passwords, *values, *tokens, *(t[len(token_prefix(t)) :] for t in tokens)]
    key_file = json.loads((data_dir / "secret.key").read_text("utf-8"))
    needles += list(key_file["keys"].values())  # the master key lives beside, never inside
    leaks = [n for n in needles if n in text or n.encode() in raw]
    assert leaks == []


def test_server_logs_hold_no_plaintext(served: Served) -> None:
    secret_value = f"api-secret-{secrets.token_hex(8)}"
    new_password = f"api-user-pass-{secrets.token_hex(8)}"
    bad_token = f"nbl_{secrets.token_urlsafe(32)}"
    with served.server.client(served.token) as client:
        assert client.get("/api/v1/me").status_code == 200
        assert client.get("/api/v1/system").status_code == 200
        put = client.put("/api/v1/secrets", json={"name": "log.check", "value": secret_value})
        assert put.status_code == 204, put.text
        made = client.post("/api/v1/users", json={"username": "logger", "password": new_password})
        assert made.status_code == 201, made.text
    with served.server.client(bad_token) as client:
        assert client.get("/api/v1/me").status_code == 401
    with served.server.client() as browser:
        assert browser.get("/login").status_code == 200
        signed_in = browser.post(
            "/login",
            data={
                "username": "admin",
                "password": ADMIN_PASSWORD,
                "csrf_token": browser.cookies["nebula_csrf"],
            },
        )
        assert signed_in.status_code == 303, signed_in.text
        session = browser.cookies["nebula_session"]

    logs = served.server.logs()
    # These are the logs of those requests (the access log is on).
    for line in (
        '"GET /api/v1/me HTTP/1.1" 200',
        '"GET /api/v1/me HTTP/1.1" 401',
        '"PUT /api/v1/secrets HTTP/1.1" 204',
        '"POST /api/v1/users HTTP/1.1" 201',
        '"POST /login HTTP/1.1" 303',
    ):
        assert line in logs, line
    assert "Traceback" not in logs
    token = served.token
    needles = [
        token,
        token[len(token_prefix(token)) :],
        bad_token,
        secret_value,
        new_password,
        ADMIN_PASSWORD,
        session,
    ]
    assert [n for n in needles if n in logs] == []


async def test_rotate_key_while_serving_keeps_new_secrets_readable(served: Served) -> None:
    succeeded(served.cli("secrets", "rotate-key"))
    value = f"after-rotation-{secrets.token_hex(8)}"
    with served.server.client(served.token) as client:
        put = client.put("/api/v1/secrets", json={"name": "after.rotation", "value": value})
        assert put.status_code == 204, put.text
    assert await read_secret(served.cli.data_dir, "after.rotation") == value
