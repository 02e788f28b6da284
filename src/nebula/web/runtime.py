"""Everything a running Nebula Command process shares, built once by the lifespan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from nebula import __version__
from nebula.fleet.agent_client import AgentClient
from nebula.fleet.control import FleetControl
from nebula.fleet.heartbeats import HeartbeatIngest
from nebula.fleet.jobs import register_fleet_jobs
from nebula.fleet.service import FleetService
from nebula.fleet.ssh import SshPool
from nebula.kernel.auth import AuthService
from nebula.kernel.config import Settings
from nebula.kernel.db import Database
from nebula.kernel.events import EventBus, build_event_bus
from nebula.kernel.jobs import JobQueue, Wakeup, default_registry
from nebula.kernel.secrets import SecretStore, load_keyring


@dataclass
class Runtime:
    settings: Settings
    db: Database
    http: httpx.AsyncClient
    auth: AuthService
    secrets: SecretStore
    events: EventBus
    jobs: JobQueue
    fleet: FleetService
    heartbeats: HeartbeatIngest
    control: FleetControl
    version: str = __version__
    started_at: float = field(default_factory=time.time)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        db = Database(settings.main_database_url)
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0), headers={"User-Agent": f"nebula-command/{__version__}"}
        )
        secrets = SecretStore(db, load_keyring(settings))
        events = build_event_bus(settings, db)
        fleet = FleetService(db, secrets)
        agents = AgentClient(http, fleet)
        registry = default_registry()
        register_fleet_jobs(registry, fleet, agents)
        return cls(
            settings=settings,
            db=db,
            http=http,
            auth=AuthService(db, settings),
            secrets=secrets,
            events=events,
            jobs=JobQueue(
                db,
                registry,
                Wakeup.for_database(db.url),
                lease_s=settings.job_lease_s,
                bus=events,
            ),
            fleet=fleet,
            heartbeats=HeartbeatIngest(db, events),
            control=FleetControl(fleet, agents, SshPool()),
        )

    async def close(self) -> None:
        await self.heartbeats.aclose()
        await self.control.ssh.aclose()
        await self.events.aclose()
        await self.http.aclose()
        await self.db.dispose()
