"""The agent's TOML config: defaults, the shipped example, and one clear line per mistake."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from nebula.agent import const
from nebula.agent.config import load_config, parse_config
from nebula.agent.errors import BadRequest, ConfigError
from tests.agent.conftest import NEBULA, agent_environment
from tests.cli_support import failed_cleanly

EXAMPLE = Path(__file__).parents[2] / "deploy" / "agent.example.toml"


def test_everything_is_optional() -> None:
    config = parse_config({})
    assert config.port == const.DEFAULT_PORT
    assert config.heartbeat_s == 30
    assert config.allow_from == ()
    assert config.actions == {}


def test_a_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEBULA_DATA_DIR", str(tmp_path))
    assert load_config().path is None
    (tmp_path / "agent.toml").write_text("port = 9999\n")
    assert load_config().port == 9999


def test_the_shipped_example_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert str(config.allow_from[0]) == "100.64.0.0/10"
    assert config.services["ollama"].port == 11434  # the well-known port, not repeated
    assert config.actions["journal"].render({"unit": "ollama.service"}) == [
        "journalctl",
        "--no-pager",
        "--unit=ollama.service",
        "--lines=100",
    ]
    with pytest.raises(BadRequest):
        config.actions["restart-unit"].render({"unit": "../../etc.service; reboot"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 70000", "port: expected an integer from 1 to 65535, got 70000"),
        ('port = "9765"', "port: expected an integer from 1 to 65535, got '9765'"),
        ("prot = 9765", "prot: unknown key"),
        ('allow_from = ["100.64.0.0/33"]', "allow_from: '100.64.0.0/33' is not an address"),
        ('allow_from = "100.64.0.0/10"', "allow_from: expected a list of strings"),
        ("sample_interval_s = 0", "sample_interval_s: expected a number from 1 to 3600"),
        ("heartbeat_s = true", "heartbeat_s: expected an integer"),
        ('capabilities = ["Wol Relay"]', "capabilities: 'Wol Relay'"),
        ('advertise_url = "100.1.2.3:9765"', "advertise_url: expected an http:// or https:// URL"),
        ('control_token_sha256 = ["abc"]', "control_token_sha256: expected SHA-256 hashes"),
        ('log_level = "loud"', "log_level: expected one of"),
        ('[urls]\nollama = "ftp://x"', "urls.ollama: expected an http:// or https:// URL"),
        ("[urls]\nmistral = 'http://x'", "urls.mistral: unknown key"),
        ('[docker]\nurl = "/var/run/docker.sock"', "docker.url: expected unix://"),
        ('[repos]\n"Bad Name" = "/x"', "repos.Bad Name: repo names use"),
        ("[repos]\nhome = 5", "repos.home: expected a string"),
        ("[services.web]\nport = 0", "services.web.port: expected an integer from 1 to 65535"),
        ('[services.web]\nstart = "systemctl start web"', "services.web.start: expected a list"),
        ("[services.web]\nstart = []", "services.web.start: expected the program"),
        ("[services.web]\nrestrat = ['x']", "services.web.restrat: unknown key"),
        ("[actions.x]\ndescription = 'no argv'", "actions.x.argv: required"),
        (
            "[actions.x]\nargv = ['{prog}']\n[actions.x.params.prog]\ntype='bool'",
            "actions.x.argv: the program (first element) cannot be a placeholder",
        ),
        ("[actions.x]\nargv = ['echo', '{who}']", "actions.x.argv: placeholder {who} has no"),
        ("[actions.x]\nargv = ['echo', '{']", "actions.x.argv: element 1 has a lone brace"),
        (
            "[actions.x]\nargv = ['echo']\n[actions.x.params.who]\ntype='bool'",
            "actions.x.params.who: declared but not used",
        ),
        (
            "[actions.x]\nargv = ['echo', '{who}']\n[actions.x.params.who]\ntype='text'",
            "actions.x.params.who.type: required: one of string, int, enum, bool",
        ),
        (
            "[actions.x]\nargv = ['echo', '{who}']\n[actions.x.params.who]\ntype='string'",
            "actions.x.params.who.pattern: required for string parameters",
        ),
        (
            "[actions.x]\nargv = ['echo', '{who}']\n"
            "[actions.x.params.who]\ntype='string'\npattern='('",
            "actions.x.params.who.pattern: not a valid regular expression",
        ),
        (
            "[actions.x]\nargv = ['echo', '{n}']\n[actions.x.params.n]\ntype='int'\nmin=5\nmax=1",
            "actions.x.params.n.min: is greater than max",
        ),
        (
            "[actions.x]\nargv = ['echo', '{n}']\n"
            "[actions.x.params.n]\ntype='int'\nmax=3\ndefault=4",
            "actions.x.params.n.default: Parameter 'n' must be at most 3.",
        ),
        (
            "[actions.x]\nargv = ['echo', '{m}']\n[actions.x.params.m]\ntype='enum'",
            "actions.x.params.m.values: required for enum parameters",
        ),
        (
            "[actions.x]\nargv = ['echo', '{m}']\n[actions.x.params.m]\ntype='enum'\nvalues=['-f']",
            "actions.x.params.m.values: '-f' starts with '-'",
        ),
        ("[actions.x]\nargv = ['echo']\ntimeout_s = 0", "actions.x.timeout_s: expected a number"),
        ("[actions.'Bad!']\nargv = ['echo']", "actions.Bad!: action names use"),
        ("[actions.x]\nargv = ['echo']\nshell = true", "actions.x.shell: unknown key"),
    ],
)
def test_each_mistake_names_its_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text))
    assert message in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"port = = 1\n", "not valid TOML: "),
        (b"\xff\xfe", "not UTF-8 text"),
        (b"[services.web]\nport = 'x'\n", "services.web.port: expected an integer"),
    ],
)
def test_a_bad_file_stops_the_agent_with_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(content)
    result = subprocess.run(
        [str(NEBULA), "agent", "run", "--port", "1", "--config", str(path)],
        capture_output=True,
        text=True,
        env=agent_environment(tmp_path),
        timeout=60,
    )
    line = failed_cleanly(result)
    assert line.startswith(f"error: {path}: ")
    assert message in line


def test_an_explicit_config_path_must_exist(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(NEBULA), "agent", "show", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        env=agent_environment(tmp_path),
        timeout=60,
    )
    assert failed_cleanly(result) == f"error: {tmp_path / 'nope.toml'}: no such file"
