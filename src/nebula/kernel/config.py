"""Settings from `NEBULA_*` variables, a `.env` file and `config/environments/<env>.yaml`.

Precedence, strongest first: arguments, environment variables, `.env`, the
environment's YAML file, built-in defaults. `load_settings` also records where each
value came from so `nebula doctor` can show it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from dotenv import dotenv_values
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from nebula.kernel.environment import detect_environment, read_host_facts
from nebula.kernel.errors import ConfigurationError, validation_problems
from nebula.kernel.paths import default_data_dir, environments_dir

ENV_PREFIX = "NEBULA_"
DOTENV_FILE = ".env"
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


class Peer(BaseModel):
    """Another Nebula machine this one knows about (Tailscale name or address)."""

    name: str
    address: str
    role: str = ""
    capabilities: list[str] = Field(default_factory=list)


class HealthEndpoint(BaseModel):
    name: str
    url: str


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=DOTENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        env_nested_delimiter="__",
    )

    env: str = "local"
    env_reason: str = "default"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    discord_database_url: str | None = None
    stream_database_url: str | None = None
    redis_url: str | None = None
    secret_key: SecretStr | None = None
    log_level: str = "INFO"
    # "auto" marks cookies Secure when the request arrived over HTTPS (directly or
    # through a proxy uvicorn trusts); "always" forces it behind odd proxies.
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    session_ttl_hours: int = Field(default=24 * 7, ge=1)
    login_max_failures: int = Field(default=5, ge=1)
    login_window_s: int = Field(default=15 * 60, ge=1)
    forwarded_allow_ips: str = "127.0.0.1"
    # A job whose worker stops renewing (crash, kill -9) runs again after this long.
    job_lease_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    worker_concurrency: int = Field(default=2, ge=0, le=256)  # in `nebula serve`; 0 = none
    ports: dict[str, int] = Field(default_factory=lambda: {"dashboard": 8080, "agent": 9765})
    paths: dict[str, str] = Field(default_factory=dict)
    peers: list[Peer] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)
    health_endpoints: list[HealthEndpoint] = Field(default_factory=list)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            DetectedEnvironmentSource(settings_cls),
            env_settings,
            dotenv_settings,
            EnvironmentYamlSource(settings_cls),
        )

    @property
    def main_database_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{self.data_dir / 'nebula.db'}"

    @property
    def discord_db_url(self) -> str:
        if self.discord_database_url:
            return normalize_database_url(self.discord_database_url)
        return self.main_database_url

    @property
    def stream_db_url(self) -> str:
        if self.stream_database_url:
            return normalize_database_url(self.stream_database_url)
        return self.main_database_url

    @property
    def key_file(self) -> Path:
        return self.data_dir / "secret.key"

    @property
    def environment_file(self) -> Path:
        return environments_dir() / f"{self.env}.yaml"


def normalize_database_url(url: str) -> str:
    """Accept the URLs people paste and pick the async driver we ship."""
    url = url.strip()
    for plain, driver in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite:///")):
        return url
    raise ConfigurationError(
        f"Unsupported database URL scheme in {redact_url(url)!r}.",
        hint="Use postgresql://user@host/db or sqlite:///path/to/file.db",
    )


def redact_url(url: str) -> str:
    """Hide the password in a URL (user info or a password= parameter) before it is shown."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    credentials, at, location = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    path, question, query = location.partition("?")
    if question:
        query = "&".join(
            f"{key}=***" if eq and key.lower() in _SECRET_PARAMS else f"{key}{eq}{value}"
            for key, eq, value in (part.partition("=") for part in query.split("&"))
        )
    return f"{scheme}://{credentials}{at}{path}{question}{query}"


def _detected_env_name() -> tuple[str, str]:
    facts = read_host_facts()
    dotenv_env = _dotenv_values().get("NEBULA_ENV")
    if dotenv_env and "NEBULA_ENV" not in facts.env:  # the environment beats .env
        facts = dataclasses.replace(facts, env={**facts.env, "NEBULA_ENV": dotenv_env})
    detection = detect_environment(facts)
    return detection.name, detection.reason


def _dotenv_values() -> dict[str, str]:
    if not Path(DOTENV_FILE).is_file():
        return {}
    return {k: v for k, v in dotenv_values(DOTENV_FILE).items() if v is not None}


def read_environment_yaml(name: str) -> dict[str, Any]:
    path = environments_dir() / f"{name}.yaml"
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigurationError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"{path} must hold a mapping of setting names to values.")
    return loaded


class DetectedEnvironmentSource(PydanticBaseSettingsSource):
    """`env` and `env_reason` come from detection only (which reads NEBULA_ENV itself)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden; pydantic never asks per field

    def __call__(self) -> dict[str, Any]:
        name, reason = _detected_env_name()
        return {"env": name, "env_reason": reason}


class EnvironmentYamlSource(PydanticBaseSettingsSource):
    """Values from `config/environments/<env>.yaml` for the detected environment."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden; pydantic never asks per field

    def __call__(self) -> dict[str, Any]:
        values = read_environment_yaml(_detected_env_name()[0])
        return {k: v for k, v in values.items() if k not in ("env", "env_reason")}


def load_settings(**overrides: Any) -> Settings:
    """Build settings; a bad value becomes one readable `ConfigurationError`."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        problems = validation_problems(
            err, separator="_", name=lambda where: f"{ENV_PREFIX}{where.upper()}"
        )
        raise ConfigurationError(f"Invalid settings: {problems}") from err
    except SettingsError as err:  # a list or mapping setting that is not valid JSON
        field = re.search(r'field "([^"]+)"', str(err))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else "a setting"
        raise ConfigurationError(
            f"Invalid settings: {name}: not valid JSON",
            hint="Lists and mappings are JSON, e.g. NEBULA_PORTS='{\"dashboard\": 8080}'",
        ) from err


def setting_sources(settings: Settings) -> dict[str, str]:
    """For each field, where its value came from (for `nebula doctor`)."""
    dotenv = {k.upper() for k in _dotenv_values()}
    environ = {k.upper() for k in os.environ}

    def given(var: str, names: set[str]) -> bool:  # NEBULA_PORTS or NEBULA_PORTS__DASHBOARD
        return var in names or any(n.startswith(f"{var}__") for n in names)

    yaml_keys = set(read_environment_yaml(settings.env))
    sources: dict[str, str] = {}
    for field in Settings.model_fields:
        var = f"{ENV_PREFIX}{field.upper()}"
        if given(var, environ):
            sources[field] = f"environment ({var})"
        elif given(var, dotenv):
            sources[field] = f".env ({var})"
        elif field in yaml_keys:
            sources[field] = str(settings.environment_file)
        elif field in ("env", "env_reason"):
            sources[field] = "detected"
        else:
            sources[field] = "default"
    return sources
