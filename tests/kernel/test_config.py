"""Settings: precedence (env > .env > YAML > default), sources, shipped YAML, database URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from nebula.kernel.config import (
    Settings,
    load_settings,
    normalize_database_url,
    redact_url,
    setting_sources,
)
from nebula.kernel.environment import ENVIRONMENTS
from nebula.kernel.errors import ConfigurationError
from nebula.kernel.paths import environments_dir

YAML_PORT, DOTENV_PORT, ENV_PORT = 7001, 7002, 7003


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An environments folder this test controls, with an empty local.yaml."""
    folder = tmp_path / "environments"
    folder.mkdir()
    (folder / "local.yaml").write_text("{}\n", encoding="utf-8")
    monkeypatch.setenv("NEBULA_CONFIG_DIR", str(folder))
    return folder


def write_yaml(folder: Path, name: str, values: object) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def write_dotenv(*lines: str) -> None:
    Path(".env").write_text("\n".join(lines) + "\n", encoding="utf-8")  # cwd is tmp_path


# Precedence ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "port", "source"),
    [
        ((), 8080, "default"),
        (("yaml",), YAML_PORT, "yaml"),
        (("dotenv",), DOTENV_PORT, ".env (NEBULA_PORT)"),
        (("yaml", "dotenv"), DOTENV_PORT, ".env (NEBULA_PORT)"),
        (("env",), ENV_PORT, "environment (NEBULA_PORT)"),
        (("yaml", "env"), ENV_PORT, "environment (NEBULA_PORT)"),
        (("dotenv", "env"), ENV_PORT, "environment (NEBULA_PORT)"),
        (("yaml", "dotenv", "env"), ENV_PORT, "environment (NEBULA_PORT)"),
    ],
)
def test_precedence_env_beats_dotenv_beats_yaml_beats_default(
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    layers: tuple[str, ...],
    port: int,
    source: str,
) -> None:
    if "yaml" in layers:
        write_yaml(config_dir, "local", {"port": YAML_PORT})
    if "dotenv" in layers:
        write_dotenv("# comment", f"NEBULA_PORT={DOTENV_PORT}", "UNRELATED=1")
    if "env" in layers:
        monkeypatch.setenv("NEBULA_PORT", str(ENV_PORT))
    settings = load_settings()
    assert settings.port == port
    expected_source = str(config_dir / "local.yaml") if source == "yaml" else source
    assert setting_sources(settings)["port"] == expected_source


def test_arguments_beat_every_other_source(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(config_dir, "local", {"port": YAML_PORT})
    write_dotenv(f"NEBULA_PORT={DOTENV_PORT}")
    monkeypatch.setenv("NEBULA_PORT", str(ENV_PORT))
    assert load_settings(port=7004).port == 7004


def test_each_field_reports_its_own_source(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(
        config_dir,
        "local",
        {"log_level": "WARNING", "host": "10.9.9.9", "capabilities": ["docker"]},
    )
    write_dotenv("NEBULA_HOST=10.8.8.8", "NEBULA_SESSION_TTL_HOURS=3")
    monkeypatch.setenv("NEBULA_SESSION_TTL_HOURS", "5")
    settings = load_settings()
    assert (settings.log_level, settings.host, settings.session_ttl_hours) == (
        "WARNING",
        "10.8.8.8",
        5,
    )
    assert settings.capabilities == ["docker"]
    assert settings.login_max_failures == 5
    sources = setting_sources(settings)
    yaml_file = str(config_dir / "local.yaml")
    assert sources["log_level"] == yaml_file
    assert sources["capabilities"] == yaml_file
    assert sources["host"] == ".env (NEBULA_HOST)"
    assert sources["session_ttl_hours"] == "environment (NEBULA_SESSION_TTL_HOURS)"
    assert sources["login_max_failures"] == "default"
    assert sources["env"] == "environment (NEBULA_ENV)"
    assert sources["env_reason"] == "detected"
    assert set(sources) == set(Settings.model_fields)


def test_yaml_values_are_coerced_to_field_types(config_dir: Path) -> None:
    write_yaml(config_dir, "local", {"port": "7010", "peers": [{"name": "a", "address": "b"}]})
    settings = load_settings()
    assert settings.port == 7010
    assert settings.peers[0].address == "b"
    assert settings.peers[0].role == ""


def test_nested_env_var_overrides_one_key_of_a_yaml_mapping(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(config_dir, "local", {"ports": {"dashboard": 8080, "agent": 9765}})
    monkeypatch.setenv("NEBULA_PORTS__DASHBOARD", "9001")
    assert load_settings().ports == {"dashboard": 9001, "agent": 9765}


def test_setting_sources_reports_nested_env_vars(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(config_dir, "local", {"ports": {"dashboard": 8080}})
    monkeypatch.setenv("NEBULA_PORTS__DASHBOARD", "9001")
    assert setting_sources(load_settings())["ports"].startswith("environment")


def test_yaml_of_the_detected_environment_is_used(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index, name in enumerate(ENVIRONMENTS):
        write_yaml(config_dir, name, {"host": f"10.0.0.{index}"})
    monkeypatch.setenv("NEBULA_ENV", "linode")
    settings = load_settings()
    assert (settings.env, settings.host) == ("linode", f"10.0.0.{ENVIRONMENTS.index('linode')}")
    assert settings.environment_file == config_dir / "linode.yaml"
    monkeypatch.delenv("NEBULA_ENV")
    monkeypatch.setenv("REPL_ID", "repl-1")
    settings = load_settings()
    assert (settings.env, settings.host) == ("replit", f"10.0.0.{ENVIRONMENTS.index('replit')}")
    assert settings.env_reason == "REPL_ID is set"


def test_unknown_nebula_env_falls_back_to_local_consistently(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(config_dir, "local", {"host": "10.0.0.1"})
    monkeypatch.setenv("NEBULA_ENV", "bogus")
    settings = load_settings()
    assert "unknown" in settings.env_reason
    assert settings.host == "10.0.0.1"
    assert settings.env == "local"
    assert settings.environment_file == config_dir / "local.yaml"


def test_nebula_env_from_dotenv_selects_the_yaml(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(config_dir, "linode", {"host": "10.0.0.2"})
    write_yaml(config_dir, "replit", {"host": "10.0.0.3"})
    monkeypatch.delenv("NEBULA_ENV")
    monkeypatch.setenv("REPL_ID", "repl-1")  # host detection alone would say "replit"
    write_dotenv("NEBULA_ENV=linode")
    settings = load_settings()
    assert settings.env == "linode"
    assert settings.host == "10.0.0.2"


# The shipped environment files -----------------------------------------------------


def test_one_shipped_yaml_per_environment() -> None:
    shipped = {p.stem for p in environments_dir().glob("*.yaml")}
    assert shipped == set(ENVIRONMENTS)


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_every_shipped_yaml_loads_for_its_environment(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEBULA_ENV", name)
    raw = yaml.safe_load(environments_dir().joinpath(f"{name}.yaml").read_text("utf-8"))
    assert isinstance(raw, dict)
    assert raw
    assert set(raw) <= set(Settings.model_fields), "unknown keys would be ignored silently"
    settings = load_settings()
    assert settings.env == name
    assert settings.env_reason == "NEBULA_ENV is set"
    assert settings.environment_file.is_file()
    dumped = settings.model_dump(mode="json")
    for key, value in raw.items():
        assert dumped[key] == value, key
    sources = setting_sources(settings)
    assert {k for k, v in sources.items() if v == str(settings.environment_file)} == set(raw)


def test_replit_listens_on_all_interfaces_and_others_on_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEBULA_ENV", "replit")
    assert load_settings().host == "0.0.0.0"
    monkeypatch.setenv("NEBULA_ENV", "linode")
    assert load_settings().host == "127.0.0.1"


# Data dir and database URLs --------------------------------------------------------


def test_data_dir_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NEBULA_DATA_DIR", "~/nebula-data")
    settings = load_settings()
    assert settings.data_dir == tmp_path / "home" / "nebula-data"
    assert settings.key_file == tmp_path / "home" / "nebula-data" / "secret.key"


@pytest.mark.skipif(os.name == "nt", reason="XDG is for POSIX")
def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    settings = load_settings()
    assert settings.data_dir == tmp_path / "xdg" / "nebula"
    assert settings.main_database_url == f"sqlite+aiosqlite:///{tmp_path}/xdg/nebula/nebula.db"


PG_MAIN = "postgresql+asyncpg://u:p@db.internal/main"


@pytest.mark.parametrize(
    ("env", "main", "discord", "stream"),
    [
        pytest.param({}, "DEFAULT", "DEFAULT", "DEFAULT", id="all-default"),
        pytest.param(
            {"NEBULA_DATABASE_URL": "postgres://u:p@db.internal/main"},
            PG_MAIN,
            PG_MAIN,
            PG_MAIN,
            id="main-only",
        ),
        pytest.param(
            {"NEBULA_DISCORD_DATABASE_URL": "postgresql://bot@db/discord"},
            "DEFAULT",
            "postgresql+asyncpg://bot@db/discord",
            "DEFAULT",
            id="discord-own",
        ),
        pytest.param(
            {
                "NEBULA_DATABASE_URL": "postgres://u:p@db.internal/main",
                "NEBULA_STREAM_DATABASE_URL": "sqlite:////srv/stream.db",
            },
            PG_MAIN,
            PG_MAIN,
            "sqlite+aiosqlite:////srv/stream.db",
            id="stream-own",
        ),
        pytest.param(
            {
                "NEBULA_DISCORD_DATABASE_URL": "postgresql+asyncpg://d@h/discord",
                "NEBULA_STREAM_DATABASE_URL": "postgresql://s@h/stream",
            },
            "DEFAULT",
            "postgresql+asyncpg://d@h/discord",
            "postgresql+asyncpg://s@h/stream",
            id="both-own",
        ),
    ],
)
def test_service_database_urls_default_to_the_main_one(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    env: dict[str, str],
    main: str,
    discord: str,
    stream: str,
) -> None:
    monkeypatch.setenv("NEBULA_DATA_DIR", str(tmp_path / "data"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    default = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'nebula.db'}"
    settings = load_settings()

    def expand(value: str) -> str:
        return default if value == "DEFAULT" else value

    assert settings.main_database_url == expand(main)
    assert settings.discord_db_url == expand(discord)
    assert settings.stream_db_url == expand(stream)


def test_bad_service_database_url_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEBULA_STREAM_DATABASE_URL", "mysql://s:hunter2@h/stream")
    settings = load_settings()
    with pytest.raises(ConfigurationError) as caught:
        _ = settings.stream_db_url
    assert "hunter2" not in caught.value.message
    assert settings.discord_db_url == settings.main_database_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db?sslmode=require", "postgresql+asyncpg://u@h/db?sslmode=require"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:////var/lib/nebula/nebula.db", "sqlite+aiosqlite:////var/lib/nebula/nebula.db"),
        ("sqlite:///relative.db", "sqlite+aiosqlite:///relative.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("  postgres://h/db\n", "postgresql+asyncpg://h/db"),
    ],
)
def test_normalize_database_url(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://root:hunter2@db/nebula", "mysql://root:***@db/nebula"),
        ("postgresql+psycopg://u:hunter2@h/db", "postgresql+psycopg://u:***@h/db"),
        ("http://admin:hunter2@example.com", "http://admin:***@example.com"),
        ("sqlite://relative.db", "sqlite://relative.db"),
        ("POSTGRES://u@h/db", "POSTGRES://u@h/db"),
        ("localhost/db", "localhost/db"),
        ("", ""),
    ],
)
def test_normalize_database_url_rejects_other_schemes(url: str, shown: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        normalize_database_url(url)
    error = caught.value
    assert error.message == f"Unsupported database URL scheme in {shown!r}."
    assert "hunter2" not in error.message
    assert error.hint is not None
    assert "postgresql://" in error.hint


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw1@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql+asyncpg://nebula:pw1@10.0.0.5:5432/n",
            "postgresql+asyncpg://nebula:***@10.0.0.5:5432/n",
        ),
        ("redis://:pw1@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://u:p@ss:pw1@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pw1/x@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("sqlite+aiosqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
        ("not a url", "not a url"),
        pytest.param(
            "postgresql://u@h/db?password=pw1",
            "postgresql://u@h/db?password=***",
            id="query-password-postgres",
        ),
        pytest.param(
            "redis://cache:6379/0?password=pw1",
            "redis://cache:6379/0?password=***",
            id="query-password-redis",
        ),
    ],
)
def test_redact_url_hides_passwords(url: str, expected: str) -> None:
    shown = redact_url(url)
    assert "pw1" not in shown
    assert shown == expected


# Invalid values --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("NEBULA_PORT", "abc", "NEBULA_PORT: Input should be a valid integer"),
        ("NEBULA_PORT", "0", "NEBULA_PORT: Input should be greater than or equal to 1"),
        ("NEBULA_PORT", "65536", "NEBULA_PORT: Input should be less than or equal to 65535"),
        ("NEBULA_PORT", "-1", "NEBULA_PORT: Input should be greater than or equal to 1"),
        ("NEBULA_PORT", "80.5", "NEBULA_PORT:"),
        ("NEBULA_SESSION_TTL_HOURS", "0", "NEBULA_SESSION_TTL_HOURS:"),
        ("NEBULA_LOGIN_MAX_FAILURES", "many", "NEBULA_LOGIN_MAX_FAILURES:"),
        ("NEBULA_COOKIE_SECURE", "sometimes", "NEBULA_COOKIE_SECURE:"),
        ("NEBULA_PORTS", '{"dashboard": "x"}', "NEBULA_PORTS"),
        ("NEBULA_PEERS", '[{"name": "home"}]', "NEBULA_PEERS"),
        pytest.param(
            "NEBULA_PORTS",
            "garbage",
            "NEBULA_PORTS",
            id="NEBULA_PORTS-not-json",
        ),
    ],
)
def test_invalid_env_values_become_one_readable_configuration_error(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = caught.value.message
    assert message.startswith("Invalid settings: ")
    assert expected in message
    assert "\n" not in message
    assert "errors.pydantic.dev" not in message


def test_invalid_port_in_dotenv_names_the_variable() -> None:
    write_dotenv("NEBULA_PORT=99999")
    with pytest.raises(ConfigurationError, match="NEBULA_PORT: Input should be less than"):
        load_settings()


def test_invalid_port_in_yaml_is_a_configuration_error(config_dir: Path) -> None:
    write_yaml(config_dir, "local", {"port": "eighty"})
    with pytest.raises(ConfigurationError, match="NEBULA_PORT: Input should be a valid integer"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port: [unclosed\n", "is not valid YAML"),
        ("- a\n- b\n", "must hold a mapping"),
        ("just a string\n", "must hold a mapping"),
    ],
)
def test_broken_yaml_is_a_configuration_error(config_dir: Path, text: str, expected: str) -> None:
    (config_dir / "local.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError, match=expected) as caught:
        load_settings()
    assert str(config_dir / "local.yaml") in caught.value.message


def test_missing_yaml_is_not_an_error(config_dir: Path) -> None:
    (config_dir / "local.yaml").unlink()
    settings = load_settings()
    assert settings.port == 8080
    assert not settings.environment_file.exists()
