"""Wake-on-LAN: a magic packet (6 x 0xFF, then the MAC 16 times) over UDP broadcast."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, Final

from nebula.agent.errors import BadRequest

DEFAULT_BROADCAST: Final = "255.255.255.255"
DEFAULT_PORT: Final = 9
# Six hex pairs with one separator used throughout: aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff.
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")


def parse_mac(value: Any) -> bytes:
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise BadRequest('"mac" must be six hex pairs like aa:bb:cc:dd:ee:ff.')
    raw = bytes.fromhex(re.sub(r"[:-]", "", value))
    if raw in (b"\x00" * 6, b"\xff" * 6):
        raise BadRequest(f'"mac" {value} is not a device address.')
    return raw


def parse_broadcast(value: Any) -> str:
    if value is None:
        return DEFAULT_BROADCAST
    if not isinstance(value, str) or len(value) > 15:
        raise BadRequest('"broadcast" must be an IPv4 address like 192.168.1.255.')
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise BadRequest('"broadcast" must be an IPv4 address like 192.168.1.255.') from None
    if address.is_multicast or address.is_unspecified:
        raise BadRequest(f'"broadcast" {value} cannot carry a wake-on-LAN packet.')
    return str(address)


def parse_port(value: Any) -> int:
    if value is None:
        return DEFAULT_PORT
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise BadRequest('"port" must be an integer from 1 to 65535 (usually 7 or 9).')
    return value


def magic_packet(mac: bytes) -> bytes:
    return b"\xff" * 6 + mac * 16


def send_magic_packet(mac: bytes, broadcast: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.sendto(magic_packet(mac), (broadcast, port))
