"""Local AI on this machine: Ollama's models, model folders, Stable Diffusion (A1111)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from nebula.agent import const
from nebula.agent.errors import BadRequest, NotFound, Unavailable, UpstreamError
from nebula.agent.httpclient import HttpReply, TransportError, request

MAX_TITLE: Final = 512


async def ollama_models(base_url: str) -> dict[str, Any]:
    """Ollama's `/api/tags`; an Ollama that is not running is reported, not raised."""
    try:
        reply = await request("GET", f"{base_url}/api/tags")
        if reply.status != 200:
            raise TransportError(f"answered {reply.status}")
        data = reply.json()
    except TransportError as err:
        return {"url": base_url, "ok": False, "error": str(err), "models": []}
    entries = data.get("models") if isinstance(data, dict) else None
    models = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        details = entry["details"] if isinstance(entry.get("details"), dict) else {}
        models.append(
            {
                "name": entry.get("name") or entry.get("model"),
                "size": entry.get("size"),
                "modified_at": entry.get("modified_at"),
                "digest": entry.get("digest"),
                "family": details.get("family"),
                "parameter_size": details.get("parameter_size"),
                "quantization": details.get("quantization_level"),
            }
        )
    return {"url": base_url, "ok": True, "models": models}


def folder_models(folders: tuple[Path, ...]) -> dict[str, Any]:
    """Model files under the configured folders: relative name and size (blocking; use a thread)."""
    files: list[dict[str, Any]] = []
    missing = []
    for folder in folders:
        if not folder.is_dir():
            missing.append(str(folder))
            continue
        _scan(folder, folder, 0, files)
    return {"folders": [str(f) for f in folders], "missing": missing, "files": files}


def _scan(root: Path, folder: Path, depth: int, files: list[dict[str, Any]]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if len(files) >= const.MODEL_SCAN_LIMIT:
            return
        try:
            if entry.is_dir(follow_symlinks=False) and depth < const.MODEL_SCAN_DEPTH:
                _scan(root, Path(entry.path), depth + 1, files)
            elif entry.is_file() and entry.name.lower().endswith(const.MODEL_SUFFIXES):
                files.append(
                    {
                        "name": Path(entry.path).relative_to(root).as_posix(),
                        "size": entry.stat().st_size,
                        "folder": str(root),
                    }
                )
        except OSError:  # vanished or unreadable: list the rest
            continue


class A1111:
    """Stable Diffusion WebUI (AUTOMATIC1111 / Forge) through its `/sdapi/v1` API."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def _call(
        self, method: str, path: str, body: Any = None, timeout_s: float = const.LOCAL_API_TIMEOUT_S
    ) -> Any:
        try:
            reply: HttpReply = await request(
                method, f"{self.base_url}{path}", body=body, timeout_s=timeout_s
            )
        except TransportError as err:
            raise Unavailable(
                f"Stable Diffusion at {self.base_url} is not answering: {err}.",
                hint="Start the WebUI with --api, or set [urls] a1111 in the agent's config.",
            ) from None
        if reply.status >= 400:
            raise UpstreamError(f"Stable Diffusion answered {reply.status} to {method} {path}.")
        try:
            return reply.json()
        except TransportError as err:
            raise UpstreamError(f"Stable Diffusion {path}: {err}.") from None

    async def models(self) -> list[dict[str, Any]]:
        data = await self._call("GET", "/sdapi/v1/sd-models")
        if not isinstance(data, list):
            raise UpstreamError("Stable Diffusion's model list is not a list.")
        return [
            {
                "title": m.get("title"),
                "model_name": m.get("model_name"),
                "hash": m.get("hash"),
                "filename": m.get("filename"),
            }
            for m in data
            if isinstance(m, dict) and isinstance(m.get("title"), str)
        ]

    async def status(self) -> dict[str, Any]:
        options = await self._call("GET", "/sdapi/v1/options")
        if not isinstance(options, dict):
            raise UpstreamError("Stable Diffusion's options are not an object.")
        return {
            "url": self.base_url,
            "ok": True,
            "model": options.get("sd_model_checkpoint"),
            "vae": options.get("sd_vae"),
        }

    async def switch(self, title: Any) -> str:
        """Load the checkpoint with this title; it must be one A1111 lists."""
        if not isinstance(title, str) or not title.strip():
            raise BadRequest('"model" must be a model title from GET /api/sd/models.')
        if len(title) > MAX_TITLE or any(ord(c) < 32 for c in title):
            raise BadRequest('"model" is not a model title (too long or control characters).')
        titles = [m["title"] for m in await self.models()]
        if title not in titles:
            raise NotFound(
                f"Stable Diffusion has no model titled {title[:80]!r}.",
                hint="List them with GET /api/sd/models.",
            )
        await self._call(
            "POST",
            "/sdapi/v1/options",
            {"sd_model_checkpoint": title},
            timeout_s=const.SD_SWITCH_TIMEOUT_S,
        )
        return title
