"""An async client for the Docker Engine API, which Docker and Podman sockets both speak.

Built on httpx, the project's one HTTP client, so the agent carries no second HTTP
stack (the docker SDK is sync on `requests`, aiodocker brings `aiohttp`). Paths carry
no API version: each engine answers in its current one, and Docker drops old versions
over time, so a pinned one would stop working.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, NoReturn, Self
from urllib.parse import urlsplit

import httpx

from nebula.agent.shapes import ContainerInfo, ContainerStats

Action = Literal["start", "stop", "restart", "remove"]

REF_PATTERN: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
MAX_TAIL: Final = 10_000
DEFAULT_TCP_PORT: Final = 2375
CONNECT_TIMEOUT_S: Final = 3.0
READ_TIMEOUT_S: Final = 30.0
# Stop and restart wait for the container's own grace period (10 s unless it sets one).
ACTION_TIMEOUT_S: Final = 180.0
STATS_CONCURRENCY: Final = 16
# Without an earlier reading, CPU % is measured over this window (two reads apart).
STATS_WINDOW_S: Final = 0.25
# An earlier reading of the same container serves as the start of the CPU window when
# it is at least this old (shorter windows are noise) and at most that old (longer
# ones say too little about now); otherwise the window is measured afresh.
PREVIOUS_SAMPLE_MIN_AGE_S: Final = 0.1
PREVIOUS_SAMPLE_MAX_AGE_S: Final = 120.0
API_VERSION: Final = re.compile(r"[0-9]+(\.[0-9]+){0,2}")
HEALTH_IN_STATUS: Final = re.compile(r"\((healthy|unhealthy|health: starting)\)")
PODMAN_STATES: Final = {"configured": "created", "stopped": "exited", "stopping": "running"}


def known_sockets() -> list[Path]:
    """Where Docker and Podman put their sockets by default, in the order we try them."""
    sockets = [Path("/var/run/docker.sock"), Path("/run/podman/podman.sock")]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        sockets.append(Path(runtime_dir) / "podman" / "podman.sock")
    return sockets


class DockerError(Exception):
    """A container operation failed. `status` is the engine's HTTP status when it
    answered, 400 when bad input was refused before any request, else None (the engine
    could not be reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def check_ref(ref: str) -> str:
    if not isinstance(ref, str) or not REF_PATTERN.fullmatch(ref):
        raise DockerError(
            f"{ref!r} is not a container name or id: use letters, digits, '_', '.' "
            "and '-', starting with a letter or digit, at most 128 characters",
            400,
        )
    return ref


def check_tail(tail: int) -> int:
    if isinstance(tail, bool) or not isinstance(tail, int) or not 1 <= tail <= MAX_TAIL:
        raise DockerError(f"tail must be a whole number from 1 to {MAX_TAIL}, not {tail!r}", 400)
    return tail


class DockerEngine:
    """One engine endpoint: `unix:///run/podman/podman.sock` or `tcp://host:2375`."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        try:
            port = parts.port or DEFAULT_TCP_PORT
        except ValueError:  # a port that is not a number
            port = 0
        if parts.scheme == "unix" and not parts.netloc and parts.path:
            self.where = f"the socket {parts.path}"
            self.socket_path: str | None = parts.path
            transport = httpx.AsyncHTTPTransport(uds=parts.path)
            base_url = "http://docker"
        elif parts.scheme in ("tcp", "http") and parts.hostname and port:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            self.where = f"{host}:{port}"
            self.socket_path = None
            transport = httpx.AsyncHTTPTransport()
            base_url = f"http://{self.where}"
        else:
            raise DockerError(
                f"cannot use the container engine address {url!r}: "
                "give unix:///path/to/docker.sock or tcp://host:port"
            )
        self._client = httpx.AsyncClient(
            transport=transport,
            base_url=base_url,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            trust_env=False,  # a proxy meant for the web must not carry engine traffic
        )
        self._podman_api: str | None = None
        self._engine_known = False
        self._previous_cpu: dict[str, CpuSample] = {}

    @classmethod
    def from_environment(cls) -> DockerEngine | None:
        """DOCKER_HOST when set, else the first default socket that exists, else None."""
        host = os.environ.get("DOCKER_HOST", "").strip()
        if host:
            return cls(host)
        for socket in known_sockets():
            if socket.exists():
                return cls(f"unix://{socket}")
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def ping(self) -> bool:
        """True when the engine answers; False when it cannot be reached or is unwell."""
        try:
            response = await self._send("GET", "/_ping")
        except DockerError:
            return False
        return response.status_code == 200

    async def containers(self, *, all: bool = True, stats: bool = False) -> list[ContainerInfo]:
        """Every container (or only running ones); `stats` adds one reading per running one."""
        params = {"all": "true" if all else "false"}
        listed, health = await asyncio.gather(
            self._json("GET", "/containers/json", params=params), self._podman_health(params)
        )
        infos = [container_info(raw, health.get(raw.get("Id", ""))) for raw in listed]
        if stats:
            await self._fill_stats(infos)
        return infos

    async def inspect(self, ref: str) -> dict[str, Any]:
        check_ref(ref)
        found: dict[str, Any] = await self._json("GET", f"/containers/{ref}/json", ref=ref)
        return found

    async def act(self, ref: str, action: Action, *, force: bool = False) -> None:
        """Start, stop, restart or remove a container. `force` removes a running one."""
        check_ref(ref)
        if action == "remove":
            await self._remove(ref, force=force)
            return
        if action not in ("start", "stop", "restart"):
            raise DockerError(
                f"unknown container action {action!r}: use start, stop, restart or remove", 400
            )
        response = await self._send("POST", f"/containers/{ref}/{action}", read_s=ACTION_TIMEOUT_S)
        # 304 means "already started" / "already stopped": the state the user asked for
        # holds, so it is a success, not an error to show.
        if response.status_code not in (200, 204, 304):
            self._fail(response, ref)

    async def logs(self, ref: str, *, tail: int = 200) -> list[str]:
        """The last `tail` lines the container printed, stdout and stderr together."""
        check_ref(ref)
        check_tail(tail)
        decoder = LogDecoder(multiplexed=not await self._has_tty(ref))
        response = await self._send("GET", f"/containers/{ref}/logs", params=_log_params(tail))
        if response.status_code != 200:
            self._fail(response, ref)
        return decoder.feed(response.content) + decoder.close()

    def follow_logs(self, ref: str, *, tail: int = 50) -> AsyncIterator[str]:
        """Lines as the container prints them, until the consumer stops iterating.

        Close the iterator (`aclose()`, or `contextlib.aclosing`) to end the request."""
        check_ref(ref)
        check_tail(tail)
        return self._follow(ref, tail)

    async def _follow(self, ref: str, tail: int) -> AsyncIterator[str]:
        decoder = LogDecoder(multiplexed=not await self._has_tty(ref))
        params = {**_log_params(tail), "follow": "true"}
        async with (
            self._stream(f"/containers/{ref}/logs", params, ref) as response,
            aclosing(self._chunks(response)) as chunks,
        ):
            async for chunk in chunks:
                for line in decoder.feed(chunk):
                    yield line
        for line in decoder.close():
            yield line

    async def _remove(self, ref: str, *, force: bool) -> None:
        params = {"force": "true" if force else "false"}
        response = await self._send("DELETE", f"/containers/{ref}", params=params)
        if response.status_code in (200, 204):
            return
        if response.status_code in (409, 500):
            # Docker answers 409 for a running container, Podman 500: ask what state it is in.
            state = (await self.inspect(ref)).get("State") or {}
            if state.get("Running") or state.get("Paused"):
                raise DockerError(
                    f"container {ref} is running: stop it first, or remove it with force",
                    409,
                )
        self._fail(response, ref)

    async def _has_tty(self, ref: str) -> bool:
        config = (await self.inspect(ref)).get("Config") or {}
        return bool(config.get("Tty"))

    async def _podman_health(self, params: dict[str, str]) -> dict[str, str]:
        """Health by container id, from Podman's own list: its Docker-style list omits it."""
        if not self._engine_known:
            # Podman names its own API version on every answer (/version is slow there).
            pong = await self._send("GET", "/_ping")
            version = pong.headers.get("Libpod-Api-Version", "")
            self._podman_api = version if API_VERSION.fullmatch(version) else None
            self._engine_known = pong.status_code == 200
        if not self._podman_api:
            return {}
        try:
            listed = await self._json(
                "GET", f"/v{self._podman_api}/libpod/containers/json", params=params
            )
        except DockerError:  # health is extra: an older Podman's list must still show
            return {}
        return {raw["Id"]: raw["Status"] for raw in listed if raw.get("Id") and raw.get("Status")}

    async def _fill_stats(self, infos: list[ContainerInfo]) -> None:
        running = [info for info in infos if info["state"] == "running"]
        limiter = asyncio.Semaphore(STATS_CONCURRENCY)
        results = await asyncio.gather(*(self._stats(info["id"], limiter) for info in running))
        for info, stats in zip(running, results, strict=True):
            info["stats"] = stats
        alive = {info["id"] for info in running}
        self._previous_cpu = {k: v for k, v in self._previous_cpu.items() if k in alive}

    async def _stats(self, container_id: str, limiter: asyncio.Semaphore) -> ContainerStats | None:
        """One reading; CPU % over the time since the previous reading of this container.

        One-shot reads leave `precpu_stats` empty (Podman always does), so the previous
        reading is our own from an earlier call, or a second read STATS_WINDOW_S later."""
        first = await self._read_stats(container_id, limiter)
        if first is None:
            return None
        current = cpu_sample(first.get("cpu_stats"))
        before = cpu_sample(first.get("precpu_stats")) or self._fresh_previous(container_id)
        if before is None and current is not None:
            await asyncio.sleep(max(0.0, current.taken_at + STATS_WINDOW_S - time.monotonic()))
            second = await self._read_stats(container_id, limiter)
            if second is None:
                return None
            first, before, current = second, current, cpu_sample(second.get("cpu_stats"))
        if current is not None:
            self._previous_cpu[container_id] = current
        used, limit = memory_usage(first.get("memory_stats") or {})
        return ContainerStats(
            cpu_percent=cpu_percent(current, before),
            memory_used=used,
            memory_limit=limit,
            memory_percent=round(used / limit * 100, 2) if limit else 0.0,
        )

    def _fresh_previous(self, container_id: str) -> CpuSample | None:
        previous = self._previous_cpu.get(container_id)
        if previous is None:
            return None
        age = time.monotonic() - previous.taken_at
        if PREVIOUS_SAMPLE_MIN_AGE_S <= age <= PREVIOUS_SAMPLE_MAX_AGE_S:
            return previous
        return None

    async def _read_stats(
        self, container_id: str, limiter: asyncio.Semaphore
    ) -> dict[str, Any] | None:
        params = {"stream": "false", "one-shot": "true"}
        async with limiter:
            response = await self._send("GET", f"/containers/{container_id}/stats", params=params)
        if response.status_code in (404, 409):  # it stopped or went away since the list
            return None
        if response.status_code != 200:
            self._fail(response, container_id)
        raw: dict[str, Any] = response.json()
        return raw

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        ref: str | None = None,
    ) -> Any:
        response = await self._send(method, path, params=params)
        if response.status_code != 200:
            self._fail(response, ref)
        try:
            return response.json()
        except ValueError as err:
            raise DockerError(
                f"{self.where} answered {path} with something that is not JSON"
            ) from err

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        read_s: float = READ_TIMEOUT_S,
    ) -> httpx.Response:
        try:
            return await self._client.request(method, path, params=params, timeout=_timeout(read_s))
        except httpx.TransportError as err:
            raise self._unreachable(err) from err

    @asynccontextmanager
    async def _stream(
        self, path: str, params: dict[str, str], ref: str
    ) -> AsyncIterator[httpx.Response]:
        try:
            async with self._client.stream(
                "GET", path, params=params, timeout=_timeout(None)
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    self._fail(response, ref)
                yield response
        except httpx.TransportError as err:
            raise self._unreachable(err) from err

    async def _chunks(self, response: httpx.Response) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.TransportError as err:
            raise self._unreachable(err) from err

    def _unreachable(self, err: httpx.TransportError) -> DockerError:
        if isinstance(err, httpx.TimeoutException):
            return DockerError(f"the container engine at {self.where} did not answer in time")
        code = _os_errno(err)
        if code == errno.ENOENT and self.socket_path:
            return DockerError(
                f"no container engine socket at {self.socket_path}: start Docker or Podman "
                "(for Podman: `systemctl enable --now podman.socket`), or set DOCKER_HOST"
            )
        if code in (errno.EACCES, errno.EPERM):
            return DockerError(
                f"permission denied on {self.where}: run as root, or add this user to the "
                "group that owns the socket (usually `docker`)"
            )
        if code == errno.ECONNREFUSED:
            return DockerError(
                f"{self.where} refused the connection: is the Docker or Podman service running?"
            )
        detail = str(err) or type(err).__name__
        return DockerError(f"cannot talk to the container engine at {self.where}: {detail}")

    def _fail(self, response: httpx.Response, ref: str | None) -> NoReturn:
        status = response.status_code
        if status == 404 and ref is not None:
            raise DockerError(f"no container named {ref}", 404)
        try:
            body = response.json()
            detail = str(body.get("message") or "") if isinstance(body, dict) else ""
        except ValueError:
            detail = response.text
        detail = detail.strip().splitlines()[0] if detail.strip() else f"HTTP {status}"
        subject = f"container {ref}" if ref else "the container engine"
        raise DockerError(f"{subject}: {detail}", status)


def _timeout(read_s: float | None) -> httpx.Timeout:
    return httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, read=read_s)


def _log_params(tail: int) -> dict[str, str]:
    return {"stdout": "true", "stderr": "true", "tail": str(tail)}


def _os_errno(err: BaseException) -> int | None:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


# --- Shapes ------------------------------------------------------------------------


def container_info(raw: dict[str, Any], health: str | None = None) -> ContainerInfo:
    """One entry of `GET /containers/json` as a ContainerInfo (stats left empty)."""
    names = raw.get("Names") or []
    status = str(raw.get("Status") or "")
    state = str(raw.get("State") or "").lower()
    return ContainerInfo(
        id=str(raw.get("Id") or ""),
        name=str(names[0]).lstrip("/") if names else "",
        image=str(raw.get("Image") or ""),
        state=PODMAN_STATES.get(state, state),
        status=status,
        created=float(raw.get("Created") or 0),
        ports=format_ports(raw.get("Ports") or []),
        health=health or _listed_health(raw, status),
        stats=None,
    )


def _listed_health(raw: dict[str, Any], status: str) -> str | None:
    listed = (raw.get("Health") or {}).get("Status")  # in the list from API 1.51 on
    if listed and listed != "none":
        return str(listed)
    match = HEALTH_IN_STATUS.search(status)
    if match is None:
        return None
    return "starting" if match.group(1) == "health: starting" else match.group(1)


def format_ports(ports: Iterable[dict[str, Any]]) -> list[str]:
    """`ip:public->private/proto` for published ports, `private/proto` for exposed ones."""
    shown: list[str] = []
    for port in ports:
        private = f"{port.get('PrivatePort')}/{port.get('Type') or 'tcp'}"
        public = port.get("PublicPort")
        if public:
            ip = str(port.get("IP") or "0.0.0.0")  # noqa: S104 - displayed, not bound
            host = f"[{ip}]" if ":" in ip else ip
            text = f"{host}:{public}->{private}"
        else:
            text = private
        if text not in shown:
            shown.append(text)
    return shown


@dataclass(frozen=True, slots=True)
class CpuSample:
    container_ns: int  # CPU time the container used since it started
    system_ns: int  # CPU time of the whole machine, all CPUs together
    online_cpus: int
    taken_at: float  # time.monotonic() when read


def cpu_sample(raw: dict[str, Any] | None) -> CpuSample | None:
    if not raw:
        return None
    usage = raw.get("cpu_usage") or {}
    total, system = usage.get("total_usage"), raw.get("system_cpu_usage")
    if not total or not system:  # an empty precpu_stats, or a container not running
        return None
    cpus = raw.get("online_cpus") or len(usage.get("percpu_usage") or []) or 1
    return CpuSample(int(total), int(system), int(cpus), time.monotonic())


def cpu_percent(now: CpuSample | None, before: CpuSample | None) -> float:
    """As the docker CLI computes it: share of the machine's CPU time x CPUs x 100."""
    if now is None or before is None:
        return 0.0
    container_delta = now.container_ns - before.container_ns
    system_delta = now.system_ns - before.system_ns
    if container_delta <= 0 or system_delta <= 0:
        return 0.0
    return round(container_delta / system_delta * now.online_cpus * 100, 2)


def memory_usage(raw: dict[str, Any]) -> tuple[int, int]:
    """(used, limit) in bytes; used leaves out page cache the kernel can take back."""
    usage = int(raw.get("usage") or 0)
    details = raw.get("stats") or {}
    # cgroup v1 reports total_inactive_file, v2 inactive_file; old engines only cache.
    for key in ("total_inactive_file", "inactive_file", "cache"):
        reclaimable = details.get(key)
        if isinstance(reclaimable, int) and 0 < reclaimable <= usage:
            usage -= reclaimable
            break
    return usage, int(raw.get("limit") or 0)


# --- Logs --------------------------------------------------------------------------


class LogDecoder:
    """Turns a logs response into lines, whatever chunks it arrives in.

    A non-TTY container's stream is multiplexed: frames of an 8-byte header (stream
    type, three zero bytes, big-endian payload length) and the payload. A TTY
    container's stream is the raw terminal output."""

    HEADER: Final = 8

    def __init__(self, *, multiplexed: bool) -> None:
        self.multiplexed = multiplexed
        self._pending = b""  # an incomplete frame
        self._partial: dict[int, bytes] = {}  # an incomplete line, per stream

    def feed(self, data: bytes) -> list[str]:
        if not self.multiplexed:
            return self._lines(0, data)
        self._pending += data
        lines: list[str] = []
        while len(self._pending) >= self.HEADER:
            size = int.from_bytes(self._pending[4 : self.HEADER], "big")
            if len(self._pending) < self.HEADER + size:
                break
            stream = self._pending[0]
            payload = self._pending[self.HEADER : self.HEADER + size]
            self._pending = self._pending[self.HEADER + size :]
            lines.extend(self._lines(stream, payload))
        return lines

    def close(self) -> list[str]:
        """The last lines that had no newline at the end."""
        rest = [_text(partial) for partial in self._partial.values() if partial]
        self._partial.clear()
        return rest

    def _lines(self, stream: int, data: bytes) -> list[str]:
        *complete, partial = (self._partial.get(stream, b"") + data).split(b"\n")
        self._partial[stream] = partial
        return [_text(line) for line in complete]


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")
