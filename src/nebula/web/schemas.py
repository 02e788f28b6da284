"""Request and response bodies of the JSON API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class MePublic(BaseModel):
    username: str
    role: str
    via: str
    permissions: list[str]


class DatabaseStatus(BaseModel):
    ok: bool
    backend: str | None = None
    version: str | None = None
    error: str | None = None


class MemoryPublic(BaseModel):
    total: int
    available: int
    used: int
    percent: float


class DiskPublic(BaseModel):
    path: str
    total: int
    used: int
    free: int
    percent: float


class GpuPublic(BaseModel):
    index: int
    name: str
    memory_total: int
    memory_used: int
    utilization: float
    temperature: float | None


class SystemPublic(BaseModel):
    """This machine's reading (the agent's `MetricsSample`) and the dashboard's own status."""

    hostname: str
    platform: str
    cpu_percent: float
    cpu_count: int
    load_avg: list[float]
    memory: MemoryPublic
    disk: DiskPublic
    gpus: list[GpuPublic]
    uptime_s: int
    boot_time: float
    taken_at: float
    env: str
    nebula_version: str
    process_uptime_s: int
    database: DatabaseStatus


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    username: str
    role: str
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    role: str = "viewer"


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str | None = None
    password: str | None = Field(default=None, min_length=1, max_length=1024)


class AuditPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    result: str
    ip: str


class AuditPage(BaseModel):
    entries: list[AuditPublic]
    total: int
    page: int


class SecretPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    scope: str
    name: str
    version: int
    key_id: str
    updated_at: datetime


class SecretWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    scope: str = Field(default="global", min_length=1, max_length=64)
    value: str = Field(min_length=1, max_length=65536)
