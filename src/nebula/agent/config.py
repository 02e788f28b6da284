"""The agent's TOML config (`--config PATH`, default `$NEBULA_DATA_DIR/agent.toml`).

Every key is optional. A bad file stops the agent with one line naming the key and
the problem. `deploy/agent.example.toml` documents each key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nebula.agent import const
from nebula.agent.actions import ActionSpec, parse_action
from nebula.agent.confread import Table, check_http_url, check_name
from nebula.agent.errors import ConfigError
from nebula.kernel.paths import default_data_dir

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
HEX_SHA256: Final = re.compile(r"[0-9a-f]{64}")


def data_dir() -> Path:
    """`$NEBULA_DATA_DIR`, else the per-user default the rest of Nebula Command uses."""
    override = os.environ.get("NEBULA_DATA_DIR")
    return Path(override).expanduser() if override else default_data_dir()


def default_config_path() -> Path:
    return data_dir() / const.CONFIG_FILE


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int | None = None
    host: str = "127.0.0.1"
    process: str | None = None
    http: str | None = None
    start: tuple[str, ...] | None = None
    stop: tuple[str, ...] | None = None
    restart: tuple[str, ...] | None = None
    timeout_s: float = const.ACTION_TIMEOUT_S

    def command(self, verb: str) -> tuple[str, ...] | None:
        return {"start": self.start, "stop": self.stop, "restart": self.restart}.get(verb)

    @property
    def managed(self) -> bool:
        return any((self.start, self.stop, self.restart))


@dataclass(frozen=True)
class AgentConfig:
    path: Path | None = None  # the file read, None when running on defaults
    host: str = const.DEFAULT_HOST
    port: int = const.DEFAULT_PORT
    advertise_url: str | None = None
    allow_from: tuple[Network, ...] = ()
    sample_interval_s: float = const.SAMPLE_INTERVAL_S
    heartbeat_s: int = const.HEARTBEAT_S
    capabilities: tuple[str, ...] = ()
    log_level: str = "info"
    disk_path: Path | None = None
    known_services: bool = True
    control_token_sha256: tuple[str, ...] = ()
    ollama_url: str = const.OLLAMA_URL
    a1111_url: str = const.A1111_URL
    comfyui_url: str = const.COMFYUI_URL
    sd_models: tuple[Path, ...] = ()
    comfyui_models: tuple[Path, ...] = ()
    docker_enabled: bool = True
    docker_url: str | None = None  # None: DOCKER_HOST or a known socket
    repos: dict[str, Path] = field(default_factory=dict)
    services: dict[str, ServiceSpec] = field(default_factory=dict)
    actions: dict[str, ActionSpec] = field(default_factory=dict)


def load_config(path: Path | None = None) -> AgentConfig:
    """Read `path` (it must exist), or the default file when there is one."""
    explicit = path is not None
    path = path or default_config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        return AgentConfig()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it: {err.strerror or err}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    try:
        return parse_config(data, path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err.message}") from None


def parse_config(data: dict[str, object], path: Path | None = None) -> AgentConfig:
    top = Table(dict(data), "")
    urls = top.table("urls")
    models = top.table("models")
    docker = top.table("docker")
    config = AgentConfig(
        path=path,
        host=top.string("host", const.DEFAULT_HOST, max_length=255),
        port=top.integer("port", const.DEFAULT_PORT, low=1, high=65535),
        advertise_url=check_http_url(top, "advertise_url", top.optional_string("advertise_url")),
        allow_from=_networks(top, "allow_from"),
        sample_interval_s=top.number(
            "sample_interval_s", const.SAMPLE_INTERVAL_S, low=1.0, high=3600.0
        ),
        heartbeat_s=top.integer("heartbeat_s", const.HEARTBEAT_S, low=5, high=3600),
        capabilities=tuple(_capabilities(top)),
        log_level=_log_level(top),
        disk_path=_optional_path(top, "disk_path"),
        known_services=top.boolean("known_services", True),
        control_token_sha256=tuple(_hashes(top)),
        ollama_url=check_http_url(urls, "ollama", urls.string("ollama", const.OLLAMA_URL))
        or const.OLLAMA_URL,
        a1111_url=check_http_url(urls, "a1111", urls.string("a1111", const.A1111_URL))
        or const.A1111_URL,
        comfyui_url=check_http_url(urls, "comfyui", urls.string("comfyui", const.COMFYUI_URL))
        or const.COMFYUI_URL,
        sd_models=tuple(Path(p) for p in models.strings("sd", allow_single=True)),
        comfyui_models=tuple(Path(p) for p in models.strings("comfyui", allow_single=True)),
        docker_enabled=docker.boolean("enabled", True),
        docker_url=_docker_url(docker),
        repos=_repos(top.table("repos")),
        services=_services(top.table("services")),
        actions=_actions(top.table("actions")),
    )
    for table in (urls, models, docker):
        table.done()
    top.done()
    return config


def _networks(table: Table, name: str) -> tuple[Network, ...]:
    networks = []
    for text in table.strings(name):
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            table.fail(name, f"{text!r} is not an address or CIDR range (like 100.64.0.0/10)")
    return tuple(networks)


def _capabilities(table: Table) -> list[str]:
    names = table.strings("capabilities")
    for name in names:
        if not re.fullmatch(const.CAPABILITY_PATTERN, name):
            table.fail("capabilities", f"{name!r}: use lower-case letters, digits, ':._-'")
    return names


def _log_level(table: Table) -> str:
    level = table.string("log_level", "info").lower()
    if level not in LOG_LEVELS:
        table.fail("log_level", f"expected one of {', '.join(LOG_LEVELS)}")
    return level


def _optional_path(table: Table, name: str) -> Path | None:
    value = table.optional_string(name)
    return Path(value).expanduser() if value else None


def _hashes(table: Table) -> list[str]:
    hashes = [h.lower() for h in table.strings("control_token_sha256")]
    for value in hashes:
        if not HEX_SHA256.fullmatch(value):
            table.fail("control_token_sha256", "expected SHA-256 hashes as 64 hex characters")
    return hashes


def _docker_url(table: Table) -> str | None:
    url = table.optional_string("url")
    if url and not re.fullmatch(r"(unix|tcp)://\S+", url):
        table.fail("url", "expected unix:///path/to/docker.sock or tcp://host:port")
    return url or None


def _repos(table: Table) -> dict[str, Path]:
    repos = {}
    for name in list(table.data):
        check_name(table, name, const.NAME_PATTERN, "repo")
        path = table.optional_string(name)
        if not path:
            table.fail(name, "expected the repository's path")
        repos[name] = Path(path).expanduser()
    return repos


def _services(table: Table) -> dict[str, ServiceSpec]:
    services = {}
    for name, entry in table.subtables():
        check_name(table, name, const.NAME_PATTERN, "service")
        port = entry.optional_integer("port", low=1, high=65535)
        spec = ServiceSpec(
            name=name,
            port=port if port is not None else const.KNOWN_SERVICES.get(name),
            host=entry.string("host", "127.0.0.1", max_length=255),
            process=entry.optional_string("process", max_length=255),
            http=check_http_url(entry, "http", entry.optional_string("http")),
            start=_argv(entry, "start"),
            stop=_argv(entry, "stop"),
            restart=_argv(entry, "restart"),
            timeout_s=entry.number(
                "timeout_s", const.ACTION_TIMEOUT_S, low=0.1, high=const.ACTION_MAX_TIMEOUT_S
            ),
        )
        entry.done()
        services[name] = spec
    return services


def _argv(table: Table, name: str) -> tuple[str, ...] | None:
    if table.raw(name) is None:
        return None
    argv = table.strings(name)
    if not argv:
        table.fail(name, "expected the program and its arguments, as a non-empty list")
    return tuple(argv)


def _actions(table: Table) -> dict[str, ActionSpec]:
    actions = {}
    for name, entry in table.subtables():
        check_name(table, name, const.NAME_PATTERN, "action")
        actions[name] = parse_action(name, entry)
    return actions
