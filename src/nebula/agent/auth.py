"""Who may talk to the agent: an address in `allow_from`, holding a control token."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time

from nebula.agent.config import Network
from nebula.agent.errors import Forbidden, Unauthorized
from nebula.agent.state import StateStore


def peer_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 callers this way
    return address


class Gate:
    def __init__(
        self, state: StateStore, allow_from: tuple[Network, ...], extra_hashes: tuple[str, ...]
    ) -> None:
        self.state = state
        self.allow_from = allow_from
        self.extra_hashes = extra_hashes

    def check_address(self, peer: str) -> None:
        if not self.allow_from:
            return
        address = peer_address(peer)
        if address is None or not any(address in network for network in self.allow_from):
            raise Forbidden(f"Address {peer} is not in this agent's allow_from list.")

    def accepted_hashes(self) -> list[str]:
        state = self.state.current()
        hashes = list(self.extra_hashes)
        if state is not None:
            hashes.extend(state.accepted(time.time()))
        return hashes

    def check_token(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized()
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        matched = False
        for accepted in self.accepted_hashes():  # every hash is compared, match or not
            matched |= hmac.compare_digest(digest, accepted)
        if not matched:
            raise Unauthorized("The control token is not valid for this agent.")
