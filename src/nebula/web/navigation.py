"""The sidebar: every area of the product, and whether it is built yet."""

from __future__ import annotations

from dataclasses import dataclass

from nebula.kernel.rbac import Permission


@dataclass(frozen=True)
class NavItem:
    label: str
    href: str
    built: bool
    summary: str  # shown on the page of an area that is not built yet
    permission: str = ""  # hidden from users whose role lacks it


@dataclass(frozen=True)
class NavSection:
    label: str
    items: tuple[NavItem, ...]


def _planned(label: str, slug: str, summary: str) -> NavItem:
    return NavItem(label, f"/{slug}", False, summary)


NAVIGATION: tuple[NavSection, ...] = (
    NavSection("", (NavItem("Overview", "/", True, ""),)),
    NavSection(
        "Infrastructure",
        (
            NavItem("Command Center", "/command-center", True, "", Permission.FLEET_READ),
            NavItem("Nodes", "/nodes", True, "", Permission.FLEET_READ),
            NavItem("Containers", "/containers", True, "", Permission.FLEET_READ),
            _planned(
                "AI Nodes", "ai-nodes", "GPU machines with Ollama, Stable Diffusion and ComfyUI."
            ),
        ),
    ),
    NavSection(
        "Automation",
        (
            NavItem("Jobs", "/jobs", True, "", Permission.JOBS_READ),
            _planned("Deploy", "deploy", "Deploy pipelines with rollbacks."),
            _planned("Marketplace", "marketplace", "One-click apps for your nodes."),
        ),
    ),
    NavSection(
        "AI",
        (
            _planned("Jarvis", "jarvis", "An assistant with tools that act on your fleet."),
            _planned("Chat", "chat", "One chat over local and cloud models, local first."),
            _planned("Models", "models", "The model registry across your AI nodes."),
            _planned("Studio", "studio", "Image and video generation."),
        ),
    ),
    NavSection(
        "Community",
        (
            _planned("Discord", "discord", "The Discord bot: identity and features per server."),
            _planned("Stream", "stream", "The stream bot for Twitch, YouTube and Kick."),
        ),
    ),
    NavSection(
        "System",
        (
            _planned("Health", "health", "Monitors, open issues and auto-fix."),
            _planned("Notifications", "notifications", "Where alerts go, and their history."),
            NavItem("Audit", "/audit", True, "", Permission.AUDIT_READ),
            NavItem("Users", "/users", True, "", Permission.USERS_READ),
            NavItem("Settings", "/settings", True, "", Permission.SETTINGS_READ),
        ),
    ),
)

PLANNED: dict[str, NavItem] = {
    item.href.strip("/"): item for section in NAVIGATION for item in section.items if not item.built
}
