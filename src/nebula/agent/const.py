"""The agent's defaults and limits, in one place."""

from __future__ import annotations

from typing import Final

DEFAULT_HOST: Final = "0.0.0.0"  # noqa: S104 - reached over Tailscale/LAN; tokens and allow_from guard it
DEFAULT_PORT: Final = 9765
CONFIG_FILE: Final = "agent.toml"  # in the data dir
STATE_DIR: Final = "agent"  # in the data dir: state.json, audit.jsonl
STATE_FILE: Final = "state.json"
AUDIT_FILE: Final = "audit.jsonl"
AUDIT_ROTATE_BYTES: Final = 10 * 1024 * 1024  # one old file (.1) is kept beside it

# Sampling: slow by default; 1 s while someone watches (`/api/metrics?fast=1`).
SAMPLE_INTERVAL_S: Final = 10.0
FAST_INTERVAL_S: Final = 1.0
FAST_FOR_S: Final = 60.0
RING_SIZE: Final = 60  # recent samples kept in memory and served by /api/metrics
FIRST_SAMPLE_AFTER_S: Final = 1.0  # CPU % over less than this is noise

# Heartbeats to the control plane.
HEARTBEAT_S: Final = 30
HEARTBEAT_MAX_BACKOFF_S: Final = 300.0
HEARTBEAT_REJECTED_RETRY_S: Final = 300.0  # after a 401: slow, the operator must enroll again
HEARTBEAT_TIMEOUT_S: Final = 10.0
ENROLL_TIMEOUT_S: Final = 15.0

# The HTTP server.
MAX_HEADER_BYTES: Final = 16 * 1024
MAX_HEADERS: Final = 64
MAX_BODY_BYTES: Final = 64 * 1024
HEADER_TIMEOUT_S: Final = 10.0  # a client must send its headers within this
IDLE_TIMEOUT_S: Final = 30.0  # keep-alive connections close after this much silence
SHUTDOWN_GRACE_S: Final = 5.0

# Commands (actions, service commands, git).
ACTION_TIMEOUT_S: Final = 60.0
ACTION_MAX_TIMEOUT_S: Final = 3600.0
GIT_TIMEOUT_S: Final = 120.0
OUTPUT_TAIL_BYTES: Final = 16 * 1024  # of stdout and of stderr, each
MAX_CONCURRENT_COMMANDS: Final = 4
STRING_PARAM_MAX_LENGTH: Final = 256  # when an action's string param sets none
STRING_PARAM_HARD_LIMIT: Final = 4096

# Probes and calls to local services.
PROBE_TIMEOUT_S: Final = 0.5
HTTP_PROBE_TIMEOUT_S: Final = 2.0
LOCAL_API_TIMEOUT_S: Final = 10.0
SD_SWITCH_TIMEOUT_S: Final = 300.0  # A1111 loads the checkpoint before it answers
MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024

# Well-known local AI and streaming services, checked on every machine.
KNOWN_SERVICES: Final[dict[str, int]] = {
    "ollama": 11434,
    "sd": 7860,
    "comfyui": 8188,
    "sunshine": 47989,
}
OLLAMA_URL: Final = "http://127.0.0.1:11434"
A1111_URL: Final = "http://127.0.0.1:7860"
COMFYUI_URL: Final = "http://127.0.0.1:8188"

# Model folders: files with these endings are listed.
MODEL_SUFFIXES: Final = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".sft")
MODEL_SCAN_DEPTH: Final = 4
MODEL_SCAN_LIMIT: Final = 5000

# Names that reach the agent from outside.
NAME_PATTERN: Final = r"[a-z0-9][a-z0-9_.-]{0,63}"  # services, repos, actions
CONTAINER_REF_PATTERN: Final = r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}"
CAPABILITY_PATTERN: Final = r"[a-z0-9][a-z0-9:._-]{0,63}"  # as the control plane checks them
LOG_TAIL_DEFAULT: Final = 200
LOG_TAIL_MAX: Final = 5000
