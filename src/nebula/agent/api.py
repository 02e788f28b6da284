"""The agent's JSON endpoints. Every input is checked here or in the module it feeds;
commands come from the agent's own config, with caller values only as whole arguments."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

from nebula.agent import const, git, wol
from nebula.agent.ai import folder_models, ollama_models
from nebula.agent.containers import check_tail
from nebula.agent.errors import AgentError, BadRequest, NotFound, Unavailable
from nebula.agent.httpserver import Request, Router
from nebula.agent.runtime import AgentRuntime

FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def flag(request: Request, name: str, default: bool) -> bool:
    text = request.query.get(name)
    if text is None:
        return default
    if text.lower() not in FLAGS:
        raise BadRequest(f"Query parameter {name!r} must be 1 or 0.")
    return FLAGS[text.lower()]


def only(body: dict[str, Any], *allowed: str) -> dict[str, Any]:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(
            f"Unknown field {unknown[0][:64]!r}.", hint=f"Accepted: {', '.join(allowed)}."
        )
    return body


def optional_body(request: Request, *allowed: str) -> dict[str, Any]:
    return only(request.json(), *allowed) if request.body.strip() else {}


class AgentApi:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    def router(self) -> Router:
        router = Router()
        add = router.add
        add("GET", "/healthz", self.healthz, public=True)
        add("GET", "/api/health", self.health)
        add("GET", "/api/metrics", self.metrics)
        add("GET", "/api/services", self.services)
        add("POST", "/api/services/{name}/{verb}", self.service_command)
        add("GET", "/api/docker/containers", self.containers)
        add("GET", "/api/docker/containers/{ref}", self.container)
        add("GET", "/api/docker/containers/{ref}/logs", self.container_logs)
        add("POST", "/api/docker/containers/{ref}/{action}", self.container_action)
        add("GET", "/api/git/status", self.git_status)
        add("POST", "/api/git/pull", self.git_pull)
        add("GET", "/api/models", self.models)
        add("GET", "/api/sd/status", self.sd_status)
        add("GET", "/api/sd/models", self.sd_models)
        add("POST", "/api/sd/switch-model", self.sd_switch)
        add("POST", "/api/wol", self.wake)
        add("GET", "/api/actions", self.actions)
        add("POST", "/api/actions/{name}", self.run_action)
        return router

    @contextlib.contextmanager
    def refusals(self, request: Request, action: str, params: Any = None) -> Iterator[None]:
        """Audit a request for a change that was refused before anything ran."""
        try:
            yield
        except AgentError as err:
            if 400 <= err.status < 500:
                self.runtime.audit.record(
                    caller=request.peer,
                    endpoint=request.path[:200],
                    action=action,
                    params=params,
                    outcome="refused",
                )
            raise

    # -- health and metrics -------------------------------------------------------

    async def healthz(self, request: Request) -> dict[str, Any]:
        """Public liveness: says nothing about the machine."""
        return {"ok": True}

    async def health(self, request: Request) -> dict[str, Any]:
        """The machine at a glance, with this agent's version and capabilities."""
        runtime = self.runtime
        sample = await runtime.sampler.current()
        state = runtime.store.current()
        return {
            "ok": True,
            "hostname": sample["hostname"],
            "os": runtime.os,
            "agent_version": runtime.version,
            "agent_uptime_s": int(time.time() - runtime.started_at),
            "uptime_s": sample["uptime_s"],
            "cpu": {
                "percent": sample["cpu_percent"],
                "count": sample["cpu_count"],
                "load_avg": sample["load_avg"],
            },
            "memory": sample["memory"],
            "disk": sample["disk"],
            "gpus": sample["gpus"],
            "capabilities": await runtime.capabilities(),
            "node": state.node if state else None,
            "enrolled": bool(state and state.enrolled),
            "taken_at": sample["taken_at"],
        }

    async def metrics(self, request: Request) -> dict[str, Any]:
        """The latest sample and recent ones; `fast=1` samples every second for a minute."""
        sampler = self.runtime.sampler
        if flag(request, "fast", False):
            sampler.go_fast()
        latest = await sampler.current()
        since_text = request.query.get("since")
        if since_text is None:
            recent = list(sampler.recent)
        else:
            try:
                recent = sampler.since(float(since_text))
            except ValueError:
                raise BadRequest("Query parameter 'since' must be epoch seconds.") from None
        return {
            "interval_s": sampler.current_interval_s,
            "fast_for_s": max(0, round(sampler.fast_until - time.monotonic())),
            "latest": latest,
            "recent": recent,
        }

    # -- services -------------------------------------------------------------------

    async def services(self, request: Request) -> dict[str, Any]:
        """Known and configured services: up, process, HTTP probe, managed."""
        return {"services": await self.runtime.services.statuses()}

    async def service_command(self, request: Request) -> dict[str, Any]:
        """Run a configured start, stop or restart command of a service."""
        name, verb = request.params["name"], request.params["verb"]
        action = f"service.{verb}"
        with self.refusals(request, action, {"service": name}):
            optional_body(request)
            spec, argv = self.runtime.services.command(name, verb)
        result = await self.runtime.runner.run(
            argv,
            timeout_s=spec.timeout_s,
            caller=request.peer,
            endpoint=request.path,
            action=action,
            params={"service": name},
        )
        return {"service": name, "command": verb, **result.as_json()}

    # -- containers ---------------------------------------------------------------------

    async def containers(self, request: Request) -> dict[str, Any]:
        """Containers with their state and, for running ones, one stats reading."""
        listed = await self.runtime.containers.listing(
            all=flag(request, "all", True), stats=flag(request, "stats", True)
        )
        return {"containers": listed}

    async def container(self, request: Request) -> dict[str, Any]:
        """The engine's full inspect document for one container."""
        return await self.runtime.containers.inspect(request.params["ref"])

    async def container_logs(self, request: Request) -> dict[str, Any]:
        """The last `tail` lines (default 200) a container printed."""
        ref = request.params["ref"]
        lines = await self.runtime.containers.logs(ref, check_tail(request.query.get("tail")))
        return {"container": ref, "lines": lines}

    async def container_action(self, request: Request) -> dict[str, Any]:
        """Start, stop, restart or remove a container."""
        ref, verb = request.params["ref"], request.params["action"]
        action = f"docker.{verb}"
        started = time.monotonic()
        with self.refusals(request, action, {"container": ref}):
            optional_body(request)
            self.runtime.containers.check_action(ref, verb)
        outcome = "failed"
        try:
            await self.runtime.containers.act(ref, verb)
            outcome = "ran"
        finally:
            self.runtime.audit.record(
                caller=request.peer,
                endpoint=request.path,
                action=action,
                params={"container": ref},
                exit_code=0 if outcome == "ran" else None,
                outcome=outcome,
                duration_ms=int((time.monotonic() - started) * 1000),
            )
        return {"ok": True, "container": ref, "action": verb}

    # -- git ----------------------------------------------------------------------------

    async def git_status(self, request: Request) -> dict[str, Any]:
        """`git status` of a configured repository."""
        name = request.query.get("repo")
        path = git.repo_path(self.runtime.config.repos, name)
        result = await self.runtime.runner.run(
            git.status_argv(path),
            timeout_s=const.GIT_TIMEOUT_S,
            caller=request.peer,
            endpoint=request.path,
            action="git.status",
            env=git.GIT_ENV,
            audited=False,
        )
        if not result.ok:
            return {"repo": name, "path": str(path), **result.as_json()}
        return {"repo": name, "path": str(path), "ok": True, **git.parse_status(result.stdout)}

    async def git_pull(self, request: Request) -> dict[str, Any]:
        """`git pull --ff-only` in a configured repository."""
        body = request.json()
        with self.refusals(request, "git.pull", body):
            only(body, "repo")
            path = git.repo_path(self.runtime.config.repos, body.get("repo"))
        result = await self.runtime.runner.run(
            git.pull_argv(path),
            timeout_s=const.GIT_TIMEOUT_S,
            caller=request.peer,
            endpoint=request.path,
            action="git.pull",
            params={"repo": body["repo"]},
            env=git.GIT_ENV,
        )
        return {"repo": body["repo"], "path": str(path), **result.as_json()}

    # -- local AI -----------------------------------------------------------------------

    async def models(self, request: Request) -> dict[str, Any]:
        """Ollama's models and the model files in the configured SD and ComfyUI folders."""
        config = self.runtime.config
        ollama, sd, comfyui = await asyncio.gather(
            ollama_models(config.ollama_url),
            asyncio.to_thread(folder_models, config.sd_models),
            asyncio.to_thread(folder_models, config.comfyui_models),
        )
        return {"ollama": ollama, "sd": sd, "comfyui": comfyui}

    async def sd_status(self, request: Request) -> dict[str, Any]:
        """Stable Diffusion (A1111): reachable, and the checkpoint loaded."""
        return await self.runtime.a1111.status()

    async def sd_models(self, request: Request) -> dict[str, Any]:
        """The checkpoints A1111 can load."""
        return {"models": await self.runtime.a1111.models()}

    async def sd_switch(self, request: Request) -> dict[str, Any]:
        """Load another checkpoint; `model` must be a title A1111 lists."""
        body = request.json()
        started = time.monotonic()
        with self.refusals(request, "sd.switch", body):
            only(body, "model")
            title = await self.runtime.a1111.switch(body.get("model"))
        self.runtime.audit.record(
            caller=request.peer,
            endpoint=request.path,
            action="sd.switch",
            params={"model": title},
            exit_code=0,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        return {"ok": True, "model": title}

    # -- wake-on-LAN --------------------------------------------------------------------

    async def wake(self, request: Request) -> dict[str, Any]:
        """Send a magic packet for `mac` to `broadcast` (default 255.255.255.255), `port` 9."""
        body = request.json()
        with self.refusals(request, "wol", body):
            only(body, "mac", "broadcast", "port")
            mac = wol.parse_mac(body.get("mac"))
            broadcast = wol.parse_broadcast(body.get("broadcast"))
            port = wol.parse_port(body.get("port"))
        try:
            wol.send_magic_packet(mac, broadcast, port)
        except OSError as err:
            raise Unavailable(
                f"Could not send to {broadcast}:{port}: {err.strerror or err}."
            ) from None
        self.runtime.audit.record(
            caller=request.peer,
            endpoint=request.path,
            action="wol",
            params={"mac": body["mac"], "broadcast": broadcast, "port": port},
            exit_code=0,
        )
        return {"ok": True, "mac": mac.hex(":"), "broadcast": broadcast, "port": port}

    # -- actions ------------------------------------------------------------------------

    async def actions(self, request: Request) -> dict[str, Any]:
        """The configured actions with their parameter specs."""
        return {"actions": [a.describe() for a in self.runtime.config.actions.values()]}

    async def run_action(self, request: Request) -> dict[str, Any]:
        """Run a configured action with typed, checked parameters."""
        name = request.params["name"]
        action = self.runtime.config.actions.get(name)
        if action is None:
            with self.refusals(request, f"action.{name[:64]}"):
                raise NotFound(
                    f"No action named {name[:64]!r}.", hint="List them with GET /api/actions."
                )
        body: dict[str, Any] = {}
        with self.refusals(
            request, f"action.{name}", request.body[:2048].decode("utf-8", "replace")
        ):
            body = optional_body(request, "params")
        given = body.get("params")
        with self.refusals(request, f"action.{name}", given):
            argv = action.render(given)
        result = await self.runtime.runner.run(
            argv,
            timeout_s=action.timeout_s,
            caller=request.peer,
            endpoint=request.path,
            action=f"action.{name}",
            params=given,
        )
        return {"action": name, **result.as_json()}
