"""Nodes: add, list, remove, enroll an agent, rotate its tokens, authenticate its calls.

Three tokens keep a node honest:
- the enrollment token (`nbe_`), one-time and short-lived, printed by `nebula node add`;
- the agent token (`nbn_`), which the agent presents on every heartbeat; only its
  hash is stored here (current, plus the previous one during a rotation's grace);
- the control token (`nbc_`), which the control plane presents to the agent; it is
  kept encrypted in the secrets store, and the agent keeps only its hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from pydantic import ValidationError
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.fleet.models import Node
from nebula.fleet.schemas import (
    NODE_NAME_RE,
    EnrollReply,
    EnrollRequest,
    NodeCreate,
    NodeInfo,
    Rotation,
)
from nebula.kernel import audit
from nebula.kernel.audit import Actor
from nebula.kernel.db import Database, utcnow
from nebula.kernel.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    Unauthenticated,
    validation_problems,
)
from nebula.kernel.models import Secret
from nebula.kernel.secrets import SecretStore
from nebula.kernel.tokens import RotatingTokenHash, generate_token, hash_token

ENROLL_TTL: Final = timedelta(hours=24)
ROTATION_GRACE: Final = timedelta(hours=1)
DEFAULT_HEARTBEAT_S: Final = 30
SECRETS_SCOPE: Final = "node"
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class AgentIdentity:
    token: str
    node_id: int
    name: str
    status: str
    heartbeat_s: int
    rotation_due: bool
    used_previous: bool


def unknown_agent() -> Unauthenticated:
    return Unauthenticated(
        "The control plane does not know this agent token.",
        hint="Enroll the agent again with `nebula agent enroll`.",
    )


async def resolve_agents(
    session: AsyncSession, tokens: Sequence[str], now: datetime
) -> list[AgentIdentity]:
    """The nodes signing with these agent tokens, in one query (unknown ones left out).
    A previous token counts only inside its rotation's grace window."""
    digests = {hash_token(t): t for t in tokens if t.startswith("nbn_")}
    if not digests:
        return []
    rows = await session.execute(
        select(
            Node.id,
            Node.name,
            Node.status,
            Node.heartbeat_s,
            Node.rotate_requested,
            Node.agent_token_hash,
            Node.agent_token_prev_hash,
            Node.agent_token_prev_until,
        ).where(
            or_(
                Node.agent_token_hash.in_(list(digests)),
                Node.agent_token_prev_hash.in_(list(digests)),
            )
        )
    )
    found = []
    for node_id, name, status, beat, rotate, current, previous, until in rows:
        if current in digests:
            found.append(
                AgentIdentity(digests[current], node_id, name, status, beat, rotate, False)
            )
        elif previous in digests and until is not None and until > now:
            found.append(AgentIdentity(digests[previous], node_id, name, status, beat, True, True))
    return found


def control_secret_name(node: str) -> str:
    return f"{node}.control"


def node_info(row: Node) -> NodeInfo:
    return NodeInfo.model_validate(
        {
            **{c: getattr(row, c) for c in NodeInfo.model_fields if hasattr(row, c)},
            "enrolled": row.agent_token_hash is not None or row.kind == "ssh",
        }
    )


def parse_node_spec(*, where: str = "Invalid node", **fields: object) -> NodeCreate:
    """A `NodeCreate` from loose input, with one readable error (after `where`) for all
    problems."""
    try:
        return NodeCreate.model_validate(fields)
    except ValidationError as err:
        raise InvalidInput(f"{where}: {validation_problems(err)}") from None


class FleetService:
    def __init__(
        self,
        db: Database,
        secrets: SecretStore,
        *,
        clock: Clock = utcnow,
        rotation_grace: timedelta = ROTATION_GRACE,
    ) -> None:
        self.db = db
        self.secrets = secrets
        self.clock = clock
        self.rotation_grace = rotation_grace

    # nodes -------------------------------------------------------------------------

    async def add_node(
        self, actor: Actor, spec: NodeCreate, *, enroll_ttl: timedelta = ENROLL_TTL
    ) -> tuple[NodeInfo, str | None]:
        """A new node; an agent node comes with its one-time enrollment token."""
        token = generate_token("nbe") if spec.kind == "agent" else None
        now = self.clock()
        row = Node(
            **spec.model_dump(),
            status="pending",
            status_changed_at=now,
            capabilities=[],
            services=[],
            heartbeat_s=DEFAULT_HEARTBEAT_S,
            enroll_token_hash=hash_token(token) if token else None,
            enroll_expires_at=now + enroll_ttl if token else None,
            created_at=now,
        )
        try:
            async with self.db.begin() as session:
                session.add(row)
                await session.flush()
                audit.record(session, actor, "node.add", f"node:{spec.name}", kind=spec.kind)
                info = node_info(row)
        except IntegrityError:
            raise Conflict(
                f"A node named {spec.name!r} already exists.",
                hint=f"Issue a new enrollment token with `nebula node add {spec.name} --reissue`.",
            ) from None
        return info, token

    async def reissue_enrollment(
        self, actor: Actor, name: str, *, enroll_ttl: timedelta = ENROLL_TTL
    ) -> str:
        """A fresh enrollment token for an existing agent node (e.g. a reinstalled machine)."""
        token = generate_token("nbe")
        async with self.db.begin() as session:
            row = await self._load(session, name)
            if row.kind != "agent":
                raise InvalidInput(f"Node {name} is reached over SSH; it has no agent to enroll.")
            row.enroll_token_hash = hash_token(token)
            row.enroll_expires_at = self.clock() + enroll_ttl
            audit.record(session, actor, "node.enroll_token", f"node:{name}")
        return token

    async def list_nodes(self, *, kind: str | None = None) -> list[NodeInfo]:
        query = select(Node).order_by(Node.name)
        if kind is not None:
            query = query.where(Node.kind == kind)
        async with self.db.begin() as session:
            rows = (await session.scalars(query)).all()
        return [node_info(r) for r in rows]

    async def get(self, name: str) -> NodeInfo:
        async with self.db.begin() as session:
            return node_info(await self._load(session, name))

    async def remove(self, actor: Actor, name: str) -> None:
        async with self.db.begin() as session:
            row = await self._load(session, name)
            await session.delete(row)
            await session.execute(
                delete(Secret).where(
                    Secret.scope == SECRETS_SCOPE, Secret.name == control_secret_name(name)
                )
            )
            audit.record(session, actor, "node.remove", f"node:{name}")

    async def set_wake_target(
        self, actor: Actor, name: str, mac: str | None, broadcast: str | None, port: int
    ) -> NodeInfo:
        spec = parse_node_spec(name=name, mac=mac, broadcast=broadcast, wol_port=port)
        async with self.db.begin() as session:
            row = await self._load(session, name)
            row.mac, row.broadcast, row.wol_port = spec.mac, spec.broadcast, spec.wol_port
            audit.record(session, actor, "node.wake_target", f"node:{name}", mac=spec.mac)
            return node_info(row)

    async def set_ssh_key(
        self, actor: Actor, name: str, key_text: str, passphrase: str | None = None
    ) -> None:
        """Store an SSH node's private key, encrypted; it must load (OpenSSH or PEM)."""
        from nebula.fleet.ssh_keys import load_private_key  # asyncssh only where needed

        load_private_key(key_text, passphrase)
        async with self.db.begin() as session:
            row = await self._load(session, name)
            if row.kind != "ssh":
                raise InvalidInput(f"Node {name} runs an agent; it needs no SSH key.")
            await self.secrets.put(session, actor, f"{name}.ssh-key", key_text, SECRETS_SCOPE)
            if passphrase:
                await self.secrets.put(
                    session, actor, f"{name}.ssh-passphrase", passphrase, SECRETS_SCOPE
                )
            audit.record(session, actor, "node.ssh_key", f"node:{name}")

    async def pin_host_key(self, name: str, host_key: str) -> None:
        """Remember an SSH node's host key the first time it is seen."""
        async with self.db.begin() as session:
            await session.execute(
                update(Node)
                .where(Node.name == name, Node.ssh_host_key.is_(None))
                .values(ssh_host_key=host_key)
            )

    async def _load(self, session: AsyncSession, name: str) -> Node:
        if not NODE_NAME_RE.match(name):
            raise NotFound(f"No node named {name!r}.")
        row = await session.scalar(select(Node).where(Node.name == name))
        if row is None:
            raise NotFound(f"No node named {name!r}.", hint="`nebula node list` shows them.")
        return row

    # enrollment and tokens -----------------------------------------------------------

    async def enroll(self, request: EnrollRequest) -> EnrollReply:
        """Trade a one-time enrollment token for the node's agent and control tokens."""
        now = self.clock()
        agent_token, hashes = RotatingTokenHash.issue()
        control_token = generate_token("nbc")
        async with self.db.begin() as session:
            # Consuming the token is one conditional update: of two agents racing with
            # the same token, exactly one gets a row back.
            name = await session.scalar(
                update(Node)
                .where(
                    Node.enroll_token_hash == hash_token(request.token),
                    Node.enroll_expires_at > now,
                )
                .values(
                    enroll_token_hash=None,
                    enroll_expires_at=None,
                    agent_token_hash=hashes.current_hash,
                    agent_token_prev_hash=None,
                    agent_token_prev_until=None,
                    rotate_requested=False,
                    hostname=request.hostname,
                    os=request.os,
                    agent_version=request.agent_version,
                    agent_url=request.agent_url,
                )
                .returning(Node.name)
            )
            if name is None:
                raise Unauthenticated(
                    "This enrollment token is not valid: unknown, already used or expired.",
                    hint="Print a new one on the control plane with "
                    "`nebula node add NAME --reissue`.",
                )
            await self.secrets.put(
                session,
                Actor(f"node:{name}"),
                control_secret_name(name),
                control_token,
                SECRETS_SCOPE,
            )
            audit.record(session, Actor(f"node:{name}"), "node.enroll", f"node:{name}")
        return EnrollReply(
            node=name,
            agent_token=agent_token,
            control_token_sha256=_sha256(control_token),
            heartbeat_s=DEFAULT_HEARTBEAT_S,
        )

    async def authenticate_agent(self, token: str) -> AgentIdentity:
        """Who signs with this agent token; `Unauthenticated` when nobody does."""
        async with self.db.begin() as session:
            found = await resolve_agents(session, [token], self.clock())
        if not found:
            raise unknown_agent()
        return found[0]

    async def request_rotation(self, actor: Actor, name: str) -> None:
        """New tokens go to the agent in its next heartbeat reply."""
        async with self.db.begin() as session:
            row = await self._load(session, name)
            if row.agent_token_hash is None:
                raise Conflict(f"Node {name} has no enrolled agent to rotate.")
            row.rotate_requested = True
            audit.record(session, actor, "node.rotate_tokens", f"node:{name}")

    async def rotate(self, agent: AgentIdentity) -> Rotation | None:
        """Issue new tokens when asked for, or again when the agent still signs with the
        previous token (the reply carrying the new one was lost)."""
        now = self.clock()
        used_previous = agent.used_previous
        previous_control = await self._control_token(agent.name)  # before the write lock
        async with self.db.begin() as session:
            row = await session.get(Node, agent.node_id, with_for_update=True)
            if row is None or not (row.rotate_requested or used_previous):
                return None
            current = RotatingTokenHash(
                row.agent_token_hash or "", row.agent_token_prev_hash, row.agent_token_prev_until
            )
            agent_token, rotated = current.rotate(now, self.rotation_grace)
            if used_previous and row.agent_token_prev_hash:
                # Keep the token the agent actually holds valid, not the unseen one.
                rotated = RotatingTokenHash(
                    rotated.current_hash, row.agent_token_prev_hash, rotated.previous_valid_until
                )
            row.agent_token_hash = rotated.current_hash
            row.agent_token_prev_hash = rotated.previous_hash
            row.agent_token_prev_until = rotated.previous_valid_until
            row.rotate_requested = False
            control_token = generate_token("nbc")
            await self.secrets.put(
                session, Actor.system(), control_secret_name(row.name), control_token, SECRETS_SCOPE
            )
            if previous_control:
                await self.secrets.put(
                    session,
                    Actor.system(),
                    f"{row.name}.control-previous",
                    previous_control,
                    SECRETS_SCOPE,
                )
        return Rotation(
            agent_token=agent_token,
            control_token_sha256=_sha256(control_token),
            grace_s=int(self.rotation_grace.total_seconds()),
        )

    async def _control_token(self, name: str) -> str | None:
        try:
            return await self.secrets.get(control_secret_name(name), SECRETS_SCOPE)
        except NotFound:
            return None

    async def control_tokens(self, name: str) -> list[str]:
        """Tokens to call the node's agent with: the current one, then the previous."""
        tokens = []
        for secret in (control_secret_name(name), f"{name}.control-previous"):
            try:
                tokens.append(await self.secrets.get(secret, SECRETS_SCOPE))
            except NotFound:
                continue
        return tokens


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
