"""Small real HTTP servers on loopback that speak what the agent talks to:
Ollama, Stable Diffusion WebUI (A1111) and the control plane's agent endpoints."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, Any]
Route = Callable[["Recorded"], Reply]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeServer:
    url: str
    routes: dict[tuple[str, str], Route]
    requests: list[Recorded] = field(default_factory=list)

    def to(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]


@contextmanager
def fake_server(
    routes: dict[tuple[str, str], Route], *, chunked: bool = False
) -> Iterator[FakeServer]:
    """Serve `routes` ({(method, path): handler}) on 127.0.0.1; unknown paths get 404."""
    server_box: list[FakeServer] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            record = Recorded(self.command, self.path, dict(self.headers.items()), body)
            fake = server_box[0]
            fake.requests.append(record)
            route = fake.routes.get((self.command, self.path))
            status, data = route(record) if route else (404, {"detail": "Not Found"})
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                half = len(payload) // 2
                for part in (payload[:half], payload[half:]):
                    if part:
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = handle_any

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    host, port = httpd.server_address[:2]
    fake = FakeServer(f"http://{host}:{port}", routes)
    server_box.append(fake)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


OLLAMA_TAGS = {
    "models": [
        {
            "name": "llama3.2:3b",
            "model": "llama3.2:3b",
            "modified_at": "2026-10-01T12:00:00Z",
            "size": 2019393189,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": {
                "format": "gguf",
                "family": "llama",
                "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M",
            },
        }
    ]
}


def fake_a1111_routes(titles: list[str], current: list[str]) -> dict[tuple[str, str], Route]:
    """A1111's model list and options; `current[0]` is the loaded checkpoint."""

    def models(_: Recorded) -> Reply:
        return 200, [
            {
                "title": title,
                "model_name": title.split(" ")[0].rsplit(".", 1)[0],
                "hash": "6ce0161689",
                "sha256": None,
                "filename": f"/models/Stable-diffusion/{title.split(' ')[0]}",
                "config": None,
            }
            for title in titles
        ]

    def options(_: Recorded) -> Reply:
        return 200, {
            "sd_model_checkpoint": current[0],
            "sd_vae": "Automatic",
            "samples_format": "png",
        }

    def set_options(request: Recorded) -> Reply:
        current[0] = request.body["sd_model_checkpoint"]
        return 200, None

    return {
        ("GET", "/sdapi/v1/sd-models"): models,
        ("GET", "/sdapi/v1/options"): options,
        ("POST", "/sdapi/v1/options"): set_options,
    }
