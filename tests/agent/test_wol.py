"""Wake-on-LAN: the magic packet as a UDP listener receives it, and strict input checks."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.agent.conftest import Agent


@pytest.fixture
def udp_listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


@pytest.mark.parametrize("mac", ["aa:bb:cc:0d:1e:2f", "AA-BB-CC-0D-1E-2F"])
async def test_magic_packet_arrives_byte_by_byte(
    agent: Agent, udp_listener: socket.socket, mac: str
) -> None:
    port = udp_listener.getsockname()[1]
    async with agent.client() as client:
        response = await client.post(
            "/api/wol", json={"mac": mac, "broadcast": "127.0.0.1", "port": port}
        )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "ok": True,
        "mac": "aa:bb:cc:0d:1e:2f",
        "broadcast": "127.0.0.1",
        "port": port,
    }
    packet, _ = udp_listener.recvfrom(1024)
    assert len(packet) == 102
    assert packet[:6] == bytes([0xFF] * 6)
    target = bytes([0xAA, 0xBB, 0xCC, 0x0D, 0x1E, 0x2F])
    for repeat in range(16):
        assert packet[6 + repeat * 6 : 12 + repeat * 6] == target
    entry = agent.audit()[-1]
    assert entry["action"] == "wol"
    assert entry["outcome"] == "ran"
    assert entry["params"] == {"mac": mac, "broadcast": "127.0.0.1", "port": port}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "mac"),
        ({"mac": 12}, "mac"),
        ({"mac": "aa:bb:cc:dd:ee"}, "mac"),
        ({"mac": "aa:bb:cc:dd:ee:ff:00"}, "mac"),
        ({"mac": "aa:bb-cc:dd:ee:ff"}, "mac"),  # mixed separators
        ({"mac": "aabbccddeeff"}, "mac"),
        ({"mac": "gg:bb:cc:dd:ee:ff"}, "mac"),
        ({"mac": " aa:bb:cc:dd:ee:ff"}, "mac"),
        ({"mac": "aa:bb:cc:dd:ee:ff\n"}, "mac"),
        ({"mac": "00:00:00:00:00:00"}, "mac"),
        ({"mac": "ff:ff:ff:ff:ff:ff"}, "mac"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "broadcast": "192.168.1"}, "broadcast"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "broadcast": "example.com"}, "broadcast"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "broadcast": "::1"}, "broadcast"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "broadcast": "224.0.0.1"}, "broadcast"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "broadcast": "0.0.0.0"}, "broadcast"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "broadcast": 3232235775}, "broadcast"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "port": 0}, "port"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "port": 70000}, "port"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "port": "9"}, "port"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "port": True}, "port"),
        ({"mac": "aa:bb:cc:dd:ee:ff", "interface": "eth0"}, "interface"),
    ],
)
async def test_bad_wake_requests_are_refused(
    shared_agent: Agent, udp_listener: socket.socket, body: dict[str, object], field: str
) -> None:
    agent = shared_agent
    async with agent.client() as client:
        response = await client.post("/api/wol", json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]
    udp_listener.settimeout(0.2)
    with pytest.raises(TimeoutError):
        udp_listener.recvfrom(1024)
    assert agent.audit()[-1]["outcome"] == "refused"
