"""`nebula agent run`: serve the API, sample on a timer, send heartbeats; stop on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from nebula.agent.api import AgentApi
from nebula.agent.config import AgentConfig, load_config
from nebula.agent.errors import AgentError
from nebula.agent.heartbeat import HeartbeatLoop
from nebula.agent.httpserver import Gatekeeper, HttpServer, Request
from nebula.agent.runtime import AgentRuntime

log = logging.getLogger("nebula.agent")


def gatekeeper(runtime: AgentRuntime) -> Gatekeeper:
    def check(request: Request, public: bool) -> None:
        try:
            runtime.gate.check_address(request.peer)
            if not public:
                runtime.gate.check_token(request.headers.get("authorization"))
        except AgentError as err:
            log.info("refused=%s peer=%s path=%s", err.code, request.peer, request.path[:200])
            raise

    return check


async def serve(config: AgentConfig, host: str, port: int) -> None:
    """Run until SIGTERM or SIGINT."""
    runtime = AgentRuntime(config, host=host, port=port)
    server = HttpServer(AgentApi(runtime).router(), gatekeeper(runtime))
    stop = asyncio.Event()
    _on_signals(stop)
    bound = await server.start(host, port)
    log.info(
        "agent=ready version=%s listen=%s advertise=%s config=%s state=%s allow_from=%s",
        runtime.version,
        ",".join(f"{h}:{p}" for h, p in bound),
        runtime.agent_url,
        config.path or "defaults",
        runtime.store.path,
        ",".join(str(n) for n in config.allow_from) or "any",
    )
    tasks = [
        asyncio.create_task(runtime.sampler.run(), name="sampler"),
        asyncio.create_task(HeartbeatLoop(runtime).run(stop), name="heartbeat"),
    ]
    try:
        await stop.wait()
    finally:
        log.info("agent=stopping")
        await server.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runtime.aclose()
        log.info("agent=stopped")


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
            if sys.platform == "win32" and sig == signal.SIGTERM:
                continue
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))


def start(host: str | None, port: int | None, config_path: Path | None) -> int:
    """`nebula agent run`: load the config, log, serve. Returns the exit code; a bad config
    or a busy port is one `error:` line on stderr, never a traceback."""
    try:
        config = load_config(config_path)
    except AgentError as err:
        return _fail(err.message, err.hint)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    listen_host, listen_port = host or config.host, port or config.port
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config, listen_host, listen_port))
    except OSError as err:
        return _fail(f"cannot listen on {listen_host}:{listen_port}: {err.strerror or err}")
    except AgentError as err:
        return _fail(err.message, err.hint)
    return 0


def parse_run_args(args: list[str]) -> tuple[str | None, int | None, Path | None] | None:
    """`--host H`, `--port N`, `--config PATH` (or `--opt=value`), as `nebula agent run` takes
    them; None for anything else, which the full command line then explains.

    This lets `nebula agent run` start without loading the CLI framework, whose option
    parsing pulls in pydantic: the agent's memory budget has no room for either."""
    values: dict[str, str] = {}
    rest = list(args)
    while rest:
        option, _, inline = rest.pop(0).partition("=")
        if option not in ("--host", "--port", "--config") or option in values:
            return None
        if not inline:
            if not rest:
                return None
            inline = rest.pop(0)
        values[option] = inline
    port_text = values.get("--port")
    if port_text is not None and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
        return None
    config = values.get("--config")
    return (
        values.get("--host"),
        int(port_text) if port_text else None,
        Path(config) if config else None,
    )


def _fail(message: str, hint: str | None = None) -> int:
    print(f"error: {message}" + (f" ({hint})" if hint else ""), file=sys.stderr)
    return 1
