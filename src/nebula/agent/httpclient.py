"""A small async HTTP/1.1 client for the agent's few outbound calls.

Heartbeats, enrollment, Ollama, A1111 and HTTP probes each make one request per
connection with a JSON body at most; asyncio streams do that without loading an
HTTP library into a process that must stay small.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nebula import __version__
from nebula.agent import const

USER_AGENT = f"nebula-agent/{__version__}"


class TransportError(Exception):
    """No usable HTTP answer: refused, timed out, TLS failure, or garbled."""


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; `TransportError` when it is not."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            raise TransportError(f"answered {self.status} with a body that is not JSON") from None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


async def request(
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = const.LOCAL_API_TIMEOUT_S,
    max_bytes: int = const.MAX_RESPONSE_BYTES,
) -> HttpReply:
    """One request; a JSON `body` is sent when it is not None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        raise TransportError(f"{url!r} is not an http:// or https:// URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TransportError(f"{url!r} has an invalid port") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"User-Agent: {USER_AGENT}",
        "Accept: application/json",
        "Connection: close",
    ]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    try:
        async with asyncio.timeout(timeout_s):
            return await _exchange(parts.scheme, parts.hostname, port, raw, method, max_bytes)
    except TimeoutError:
        raise TransportError(f"no answer from {parts.netloc} within {timeout_s:g} s") from None
    except ssl.SSLError as err:
        raise TransportError(f"TLS with {parts.netloc} failed: {err.reason or err}") from None
    except ConnectionRefusedError:
        raise TransportError(f"{parts.netloc} refused the connection") from None
    except OSError as err:
        raise TransportError(f"cannot reach {parts.netloc}: {err.strerror or err}") from None


async def _exchange(
    scheme: str, host: str, port: int, raw: bytes, method: str, max_bytes: int
) -> HttpReply:
    tls = _tls_context() if scheme == "https" else None
    reader, writer = await asyncio.open_connection(
        host, port, ssl=tls, limit=const.MAX_HEADER_BYTES * 4
    )
    try:
        writer.write(raw)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise TransportError(f"{host}:{port} closed the connection or sent garbage") from None
        status, headers = _parse_head(head)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader, max_bytes)
        elif "content-length" in headers:
            length = _int_header(headers["content-length"])
            if length > max_bytes:
                raise TransportError(f"answer larger than {max_bytes} bytes")
            body = await reader.readexactly(length)
        else:
            body = await reader.read(max_bytes + 1)
            while len(body) <= max_bytes:
                more = await reader.read(max_bytes + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > max_bytes:
                raise TransportError(f"answer larger than {max_bytes} bytes")
        return HttpReply(status, headers, body)
    except asyncio.IncompleteReadError:
        raise TransportError(f"{host}:{port} closed the connection mid-answer") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TransportError("the answer is not HTTP/1.x")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _int_header(text: str) -> int:
    if not text.isdigit():
        raise TransportError(f"malformed length {text[:20]!r}")
    return int(text)


async def _read_chunked(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size_text = size_line.split(b";", 1)[0].strip().decode("latin-1")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise TransportError(f"malformed chunk size {size_text[:20]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        if len(body) + size > max_bytes:
            raise TransportError(f"answer larger than {max_bytes} bytes")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
