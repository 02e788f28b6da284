"""Real-browser tests: Debian's Chromium, driven by Playwright, against `nebula serve`.

Each test starts its own server (a fresh data folder, SQLite) so no test depends on
another's order. Chromium is launched once per module. Without /usr/bin/chromium the
tests are skipped, except under CI=true, where a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Response,
    expect,
    sync_playwright,
)

from tests.ci import IN_CI
from tests.conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.browser

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SERVER_START_TIMEOUT_S: Final = 20.0
SERVER_STOP_TIMEOUT_S: Final = 10.0
LIVE_TIMEOUT_MS: Final = 10_000  # the Overview's stream sends an event every 2 s
OVERVIEW_SCREENSHOT: Final = Path("/tmp/overview.png")
ADMIN: Final = "admin"
PERCENT: Final = re.compile(r"^\d{1,3}%$")

SIDEBAR: Final = [
    ("", "Overview", "/", True),
    ("Infrastructure", "Command Center", "/command-center", True),
    ("Infrastructure", "Nodes", "/nodes", True),
    ("Infrastructure", "Containers", "/containers", True),
    ("Infrastructure", "AI Nodes", "/ai-nodes", False),
    ("Automation", "Jobs", "/jobs", True),
    ("Automation", "Deploy", "/deploy", False),
    ("Automation", "Marketplace", "/marketplace", False),
    ("AI", "Jarvis", "/jarvis", False),
    ("AI", "Chat", "/chat", False),
    ("AI", "Models", "/models", False),
    ("AI", "Studio", "/studio", False),
    ("Community", "Discord", "/discord", False),
    ("Community", "Stream", "/stream", False),
    ("System", "Health", "/health", False),
    ("System", "Notifications", "/notifications", False),
    ("System", "Audit", "/audit", True),
    ("System", "Users", "/users", True),
    ("System", "Settings", "/settings", True),
]

# Reads the sidebar in document order: (section, label, href, built) per link.
READ_SIDEBAR_JS: Final = """
(nav) => {
  const items = [];
  let section = "";
  for (const el of nav.children) {
    if (el.classList.contains("nav-section")) section = el.textContent.trim();
    if (el.matches("a.nav-item")) {
      const label = [...el.childNodes]
        .filter((n) => n.nodeType === Node.TEXT_NODE)
        .map((n) => n.textContent)
        .join("")
        .trim();
      items.push([section, label, el.getAttribute("href"), !el.querySelector(".soon")]);
    }
  }
  return items;
}
"""

# A POST made by the page's own script, as an attacker's page cannot (it cannot read
# the meta tag). Returns the status and body.
POST_FORM_JS: Final = """
async ({url, fields, withToken}) => {
  const body = new FormData();
  for (const [name, value] of Object.entries(fields)) body.append(name, value);
  const headers = {};
  if (withToken) {
    headers["X-CSRF-Token"] = document.querySelector('meta[name="csrf-token"]').content;
  }
  const r = await fetch(url, {method: "POST", body, headers, redirect: "manual"});
  return {status: r.status, text: await r.text()};
}
"""

GET_JSON_JS: Final = """
async (url) => {
  const r = await fetch(url, {headers: {Accept: "application/json"}});
  return {status: r.status, body: await r.json()};
}
"""

HTMX_POST_JS: Final = """
async ({url, values}) => {
  const done = new Promise((resolve) => {
    document.addEventListener(
      "htmx:afterRequest",
      (event) => resolve({
        status: event.detail.xhr.status,
        sentToken: event.detail.requestConfig.headers["X-CSRF-Token"] || "",
      }),
      {once: true},
    );
  });
  htmx.ajax("POST", url, {source: document.body, swap: "none", values});
  return await done;
}
"""


# the server -------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def nebula_command() -> list[str]:
    """The `nebula` console script of this interpreter (cli.py has no `__main__`)."""
    script = Path(sys.executable).with_name("nebula")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from nebula.cli import main; main()"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    with httpx.Client(base_url=server.url, trust_env=False, timeout=2.0) as client:
        while True:
            if server.process.poll() is not None:
                pytest.fail(
                    f"nebula serve exited with {server.process.returncode}:\n{server.log()}"
                )
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"nebula serve did not answer /healthz within {SERVER_START_TIMEOUT_S:.0f} s:"
                    f"\n{server.log()}"
                )
            time.sleep(0.05)


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        pytest.fail(
            f"nebula serve ignored SIGTERM for {SERVER_STOP_TIMEOUT_S:.0f} s:\n{server.log()}"
        )


@contextlib.contextmanager
def serving(tmp_path: Path, **extra_env: str) -> Iterator[Server]:
    """`nebula serve` on a free port with an empty data folder (and `extra_env`)."""
    root = tmp_path / "server"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")}
    env.update(NEBULA_DATA_DIR=str(root / "data"), NEBULA_ENV="local", **extra_env)
    port = free_port()
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*nebula_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Server(f"http://127.0.0.1:{port}", root, process, log_path)
    try:
        wait_until_healthy(running)
        yield running
    finally:
        stop(running)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path) as running:
        yield running


def create_first_admin(server: Server) -> None:
    """Complete the Quick Start over plain HTTP, as a browser would post the form."""
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as client:
        assert client.get("/").status_code == 200
        response = client.post(
            "/setup",
            data={
                "username": ADMIN,
                "password": ADMIN_PASSWORD,
                "password_confirm": ADMIN_PASSWORD,
                "csrf_token": client.cookies["nebula_csrf"],
            },
        )
        assert response.status_code == 303, response.text


@pytest.fixture
def admin_server(server: Server) -> Server:
    """A server whose first admin already exists (created through the wizard's form)."""
    create_first_admin(server)
    return server


# the browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(f"{message}; it must be installed when CI=true")
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    page: Page
    errors: list[str] = field(default_factory=list)


def open_tab(browser: Browser, server: Server) -> Iterator[Tab]:
    context: BrowserContext = browser.new_context(
        base_url=server.url, viewport={"width": 1280, "height": 800}
    )
    context.set_default_timeout(5_000)
    tab = Tab(context.new_page())
    tab.page.on("pageerror", lambda err: tab.errors.append(str(err)))
    try:
        yield tab
    finally:
        context.close()  # before the server stops: ends the Overview's event stream
    assert not tab.errors, f"JavaScript errors on the page: {tab.errors}"


@pytest.fixture
def fresh(browser: Browser, server: Server) -> Iterator[Tab]:
    """A browser tab on a server that has no admin yet."""
    yield from open_tab(browser, server)


@pytest.fixture
def tab(browser: Browser, admin_server: Server) -> Iterator[Tab]:
    """A browser tab on a server with an admin, not signed in yet."""
    yield from open_tab(browser, admin_server)


# helpers ----------------------------------------------------------------------------


def click_for_post(page: Page, path: str, button: str) -> Response:
    """Click a submit button; return the answer to the POST to `path` it sends."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.split("?")[0].endswith(path)
    ) as caught:
        page.get_by_role("button", name=button).click()
    response: Response = caught.value
    page.wait_for_load_state()
    return response


def submit_login(page: Page, username: str, password: str) -> Response:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    return click_for_post(page, "/login", "Sign in")


def sign_in(page: Page) -> None:
    page.goto("/login")
    response = submit_login(page, ADMIN, ADMIN_PASSWORD)
    assert response.status == 303, f"sign-in answered {response.status}"
    expect_overview(page)


def expect_overview(page: Page) -> None:
    expect(page).to_have_url(re.compile(r"^http://127\.0\.0\.1:\d+/$"))
    expect(page.locator("main h1")).to_have_text(re.compile(r"^Overview\b"))


def expect_sign_in_page(page: Page) -> None:
    expect(page).to_have_url(re.compile(r"/login(\?.*)?$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def fill_wizard(page: Page, username: str, password: str, repeat: str) -> None:
    page.get_by_label("Admin username").fill(username)
    page.locator('input[name="password"]').fill(password)
    page.get_by_label("Repeat password").fill(repeat)


def api_get(page: Page, path: str) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(GET_JSON_JS, path)
    return result


def post_form(page: Page, url: str, fields: dict[str, str], *, with_token: bool) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        POST_FORM_JS, {"url": url, "fields": fields, "withToken": with_token}
    )
    return result


def usernames(page: Page) -> list[str]:
    users = api_get(page, "/api/v1/users")
    assert users["status"] == 200, users
    return [u["username"] for u in users["body"]]


# 1. fresh install -------------------------------------------------------------------


def test_quick_start_to_live_overview_and_sign_out(fresh: Tab) -> None:
    page = fresh.page
    page.goto("/")
    expect(page.get_by_role("heading", name="Quick Start")).to_be_visible()
    expect(page.get_by_test_id("detected-env")).to_contain_text("local")
    expect(page).to_have_title(re.compile(r"^Quick Start\b"))

    fill_wizard(page, ADMIN, ADMIN_PASSWORD, ADMIN_PASSWORD)
    assert click_for_post(page, "/setup", "Create admin").status == 303
    expect_overview(page)
    expect(page.locator(".topbar .user")).to_contain_text(ADMIN)

    live = page.get_by_test_id("live-status")
    expect(live).to_have_text("connected", timeout=LIVE_TIMEOUT_MS)
    for field_name in ("cpu", "memory", "disk"):
        value = page.locator(f'#overview [data-field="{field_name}"]')
        expect(value).to_have_text(PERCENT)
        assert 0 <= int(value.inner_text().rstrip("%")) <= 100
    expect(page.locator('[data-field="db_status"]')).to_have_text("online")
    expect(page.locator('[data-field="updated"]')).to_have_text(re.compile(r"\d+:\d\d"))
    page.set_viewport_size({"width": 1280, "height": 1000})  # the whole sidebar, for humans
    page.screenshot(path=str(OVERVIEW_SCREENSHOT), full_page=True)

    page.get_by_test_id("logout").click()
    expect_sign_in_page(page)
    assert api_get(page, "/api/v1/me")["status"] == 401
    page.goto("/")
    expect_sign_in_page(page)


# 2. wizard errors -------------------------------------------------------------------


def test_quick_start_refuses_mismatched_and_short_passwords(fresh: Tab) -> None:
    page = fresh.page
    page.goto("/")
    fill_wizard(page, ADMIN, ADMIN_PASSWORD, ADMIN_PASSWORD + "!")
    assert click_for_post(page, "/setup", "Create admin").status == 422
    expect(page.get_by_role("alert")).to_have_text("The two passwords do not match.")
    expect(page.get_by_label("Admin username")).to_have_value(ADMIN)

    # The browser itself refuses a password under 12 characters (minlength)...
    fill_wizard(page, ADMIN, "short pw 11", "short pw 11")
    page.get_by_role("button", name="Create admin").click()
    password = page.locator('input[name="password"]')
    assert password.evaluate("el => el.validity.tooShort") is True
    # ...and so does the server, for clients that skip that check.
    page.locator('form[action="/setup"]').evaluate("form => { form.noValidate = true; }")
    assert click_for_post(page, "/setup", "Create admin").status == 422
    expect(page.get_by_role("alert")).to_contain_text("at least 12 characters")

    # No admin was created: the wizard still shows, and /login sends back to it.
    page.goto("/")
    expect(page.get_by_role("heading", name="Quick Start")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)
    page.goto("/login")
    expect(page.get_by_role("heading", name="Quick Start")).to_be_visible()


# 3. CSRF ----------------------------------------------------------------------------


def test_csrf_token_is_required_for_cookie_authenticated_posts(tab: Tab) -> None:
    page = tab.page
    sign_in(page)
    fields = {"username": "carol", "password": "another long password", "role": "viewer"}

    refused = post_form(page, "/users", fields, with_token=False)
    assert refused["status"] == 403, refused
    assert "did not come from this site" in refused["text"]
    forged = post_form(page, "/users", {**fields, "csrf_token": "x" * 43}, with_token=False)
    assert forged["status"] == 403, forged
    assert "carol" not in usernames(page)

    accepted = post_form(page, "/users", fields, with_token=True)
    assert accepted["status"] == 200, accepted
    assert "User carol created." in accepted["text"]
    page.goto("/users")
    row = page.locator("main tbody tr").filter(has=page.get_by_role("cell", name="carol"))
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("viewer")

    logout = post_form(page, "/logout", {}, with_token=False)
    assert logout["status"] == 403, logout
    me = api_get(page, "/api/v1/me")
    assert me["status"] == 200, me
    assert me["body"]["username"] == ADMIN
    page.goto("/")
    expect_overview(page)


# 4. the sidebar and the audit log ---------------------------------------------------


def test_sidebar_lists_every_area_and_audit_records_sign_in(tab: Tab) -> None:
    page = tab.page
    sign_in(page)
    sidebar = page.get_by_role("navigation", name="Main")
    found = sidebar.evaluate(READ_SIDEBAR_JS)
    assert [tuple(item) for item in found] == SIDEBAR

    for _, label, href, built in SIDEBAR:
        sidebar.locator(f'a.nav-item[href="{href}"]').click()
        expect(page).to_have_url(re.compile(rf"^http://127\.0\.0\.1:\d+{re.escape(href)}$"))
        expect(page).to_have_title(f"{label} · Nebula Command")
        expect(page.locator("main h1")).to_have_text(re.compile(rf"^{re.escape(label)}\b"))
        expect(sidebar.locator("a.nav-item.active")).to_have_attribute("href", href)
        not_built = page.get_by_text("Not built yet.")
        expect(not_built).to_have_count(0 if built else 1)

    page.goto("/ai-nodes")
    expect(page.locator("main")).to_contain_text("Not built yet.")
    expect(page.locator("main")).to_contain_text("GPU machines")

    page.goto("/audit")
    rows = page.locator("main tbody tr")
    created = rows.filter(has_text="user.create").filter(has_text=f"user:{ADMIN}")
    expect(created).to_have_count(1)
    expect(created).to_contain_text("setup-wizard")
    signed_in = rows.filter(has_text="auth.login").filter(has_text=f"user:{ADMIN}")
    expect(signed_in.first.locator(".badge")).to_have_text("ok")  # newest first


# 5. htmx ----------------------------------------------------------------------------


def test_htmx_is_served_loaded_and_sends_the_csrf_token(tab: Tab) -> None:
    page = tab.page
    script = page.request.get("/static/vendor/htmx.min.js")
    assert script.status == 200
    assert "javascript" in script.headers["content-type"]
    assert script.text().startswith("var htmx=")

    sign_in(page)
    page.wait_for_function("() => typeof window.htmx?.ajax === 'function'")
    assert str(page.evaluate("() => htmx.version")).startswith("2.")

    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    fields = {"username": "hank", "password": "another long password", "role": "viewer"}
    sent = page.evaluate(HTMX_POST_JS, {"url": "/users", "values": fields})
    assert sent == {"status": 200, "sentToken": token}
    assert "hank" in usernames(page)


# 6. sign-in throttling --------------------------------------------------------------


def test_wrong_password_then_throttled_after_five_failures(tab: Tab) -> None:
    page = tab.page
    page.goto("/login")
    for attempt in range(1, 6):
        response = submit_login(page, ADMIN, f"wrong password {attempt}")
        assert response.status == 401, f"attempt {attempt} answered {response.status}"
        expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
        expect(page.get_by_label("Username")).to_have_value(ADMIN)

    # The sixth is refused before the password is even checked: the right one fails too.
    response = submit_login(page, ADMIN, ADMIN_PASSWORD)
    assert response.status == 429
    assert int(response.headers["retry-after"]) > 0
    expect(page.get_by_role("alert")).to_contain_text("Too many failed sign-ins")
    assert api_get(page, "/api/v1/me")["status"] == 401
