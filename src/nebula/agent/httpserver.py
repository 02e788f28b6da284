"""A small HTTP/1.1 JSON server on asyncio streams: keep-alive, size and time limits.

The agent serves a handful of JSON routes to one caller (the control plane). The
standard library does that in a few hundred lines and keeps the agent's memory at
about two thirds of what uvicorn plus an ASGI layer would take (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

from nebula.agent import const
from nebula.agent.errors import (
    AgentError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)

log = logging.getLogger("nebula.agent.http")
MAX_CONNECTIONS: Final = 128
MAX_QUERY_FIELDS: Final = 32
_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    peer: str
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or a `BadRequest` saying what is wrong with it."""
        if not self.body.strip():
            raise BadRequest("Send a JSON object as the request body.")
        try:
            data = json.loads(self.body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as err:
            raise BadRequest(f"The body is not valid JSON: {_first_line(err)}") from None
        if not isinstance(data, dict):
            raise BadRequest("The body must be a JSON object.")
        return data


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(status, body, headers=headers or {})


def error_response(err: AgentError) -> Response:
    error: dict[str, str] = {"code": err.code, "message": err.message}
    if err.hint:
        error["hint"] = err.hint
    headers = {}
    if err.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="nebula-agent"'
    if isinstance(err, MethodNotAllowed):
        headers["Allow"] = ", ".join(err.allowed)
    return json_response({"error": error}, err.status, headers)


Handler = Callable[[Request], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    regex: re.Pattern[str]
    handler: Handler
    public: bool


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler, *, public: bool = False) -> None:
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        self.routes.append(Route(method, template, re.compile(pattern), handler, public))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = []
        for route in self.routes:
            found = route.regex.fullmatch(path)
            if found is None:
                continue
            if route.method == method:
                params = {k: unquote(v, errors="replace") for k, v in found.groupdict().items()}
                return route, params
            allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(sorted(set(allowed)))
        raise NotFound(f"No such endpoint: {method} {path[:200]}")


# Runs before every handler with the route's `public` flag; raises to refuse the caller.
Gatekeeper = Callable[[Request, bool], None]


class HttpServer:
    def __init__(self, router: Router, gatekeeper: Gatekeeper) -> None:
        self.router = router
        self.gatekeeper = gatekeeper
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._idle: set[asyncio.Task[None]] = set()  # waiting for their next request

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        self._server = await asyncio.start_server(
            self._accept, host, port, limit=const.MAX_HEADER_BYTES
        )
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in self._idle:  # nothing in flight there: close at once
            task.cancel()
        if self._connections:  # let requests in flight finish, briefly
            _, pending = await asyncio.wait(set(self._connections), timeout=const.SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, was too slow, or the server is stopping
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) else "unknown"
        while True:
            task = asyncio.current_task()
            assert task is not None
            self._idle.add(task)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), const.IDLE_TIMEOUT_S)
            except asyncio.IncompleteReadError:
                return  # the client closed the connection between requests
            except asyncio.LimitOverrunError:
                await self._send(writer, _plain_error(431, "The request headers are too large."))
                return
            finally:
                self._idle.discard(task)
            try:
                request, keep_alive = await self._read_request(head, reader, writer, peer)
            except AgentError as err:
                await self._send(writer, error_response(err), keep_alive=False)
                return
            response = await self._dispatch(request)
            await self._send(writer, response, keep_alive=keep_alive)
            if not keep_alive:
                return

    async def _read_request(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> tuple[Request, bool]:
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
            raise BadRequest("Malformed request line.")
        method, target, version = parts
        if not _TOKEN_CHARS.fullmatch(method):
            raise BadRequest("Malformed request method.")
        if len(lines) - 1 > const.MAX_HEADERS:
            raise BadRequest("Too many request headers.")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN_CHARS.fullmatch(name):
                raise BadRequest("Malformed request header.")
            name = name.lower()
            if name in headers and name in ("content-length", "authorization", "host"):
                raise BadRequest(f"Repeated {name} header.")
            headers[name] = value.strip()
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if "transfer-encoding" in headers:
            raise BadRequest("Chunked request bodies are not accepted; send Content-Length.")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise BadRequest("Malformed Content-Length.")
        length = int(length_text)
        if length > const.MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The body may be at most {const.MAX_BODY_BYTES} bytes.")
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = (
            await asyncio.wait_for(reader.readexactly(length), const.HEADER_TIMEOUT_S)
            if length
            else b""
        )
        path, _, query_text = target.partition("?")
        try:
            query = dict(
                parse_qsl(query_text, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
            )
        except ValueError:
            raise BadRequest("Too many query parameters.") from None
        request = Request(method, path, query, headers, body, peer)
        return request, keep_alive

    async def _dispatch(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            try:
                route, params = self.router.match(request.method, request.path)
            except AgentError:
                self.gatekeeper(request, False)  # strangers learn nothing about our routes
                raise
            self.gatekeeper(request, route.public)
            request.params = params
            result = await route.handler(request)
            response = result if isinstance(result, Response) else json_response(result)
        except AgentError as err:
            response = error_response(err)
            if err.status >= 500:
                log.warning(
                    "request=%s path=%s status=%d error=%r",
                    request.method,
                    request.path[:200],
                    err.status,
                    err.message,
                )
        except Exception:
            log.exception("request=%s path=%s status=500", request.method, request.path[:200])
            response = error_response(AgentError("The agent failed unexpectedly; see its log."))
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request=%s path=%s peer=%s status=%d ms=%.1f",
                request.method,
                request.path[:200],
                request.peer,
                response.status,
                (time.perf_counter() - started) * 1000,
            )
        return response

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, *, keep_alive: bool = False
    ) -> None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Status"
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{name}: {value}" for name, value in response.headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)
        await writer.drain()


def _plain_error(status: int, message: str) -> Response:
    code = HTTPStatus(status).phrase.lower().replace(" ", "_")
    return json_response({"error": {"code": code, "message": message}}, status)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__
