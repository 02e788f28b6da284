"""Reading a node's history: raw samples for recent windows, 1-minute rollups beyond."""

from __future__ import annotations

from datetime import timedelta
from typing import Final, Literal

from sqlalchemy import select

from nebula.fleet.models import Node, NodeRollup, NodeSample
from nebula.fleet.schemas import MetricPoint, MetricSeries
from nebula.kernel.db import Database, utcnow
from nebula.kernel.errors import InvalidInput, NotFound

WINDOWS: Final = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
RAW_UP_TO: Final = timedelta(hours=6)


async def series(db: Database, node: str, window: str) -> MetricSeries:
    span = WINDOWS.get(window)
    if span is None:
        raise InvalidInput(f"Unknown window {window!r}; use one of {', '.join(WINDOWS)}.")
    since = utcnow() - span
    async with db.begin() as session:
        node_id = await session.scalar(select(Node.id).where(Node.name == node))
        if node_id is None:
            raise NotFound(f"No node named {node!r}.")
        if span <= RAW_UP_TO:
            rows = await session.execute(
                select(
                    NodeSample.at,
                    NodeSample.cpu,
                    NodeSample.memory,
                    NodeSample.disk,
                    NodeSample.gpu_util,
                    NodeSample.gpu_temp,
                )
                .where(NodeSample.node_id == node_id, NodeSample.at >= since)
                .order_by(NodeSample.at)
            )
            resolution: Literal["raw", "1m"] = "raw"
        else:
            rows = await session.execute(
                select(
                    NodeRollup.minute,
                    NodeRollup.cpu_avg,
                    NodeRollup.memory_avg,
                    NodeRollup.disk_avg,
                    NodeRollup.gpu_util_avg,
                    NodeRollup.gpu_temp_max,
                )
                .where(NodeRollup.node_id == node_id, NodeRollup.minute >= since)
                .order_by(NodeRollup.minute)
            )
            resolution = "1m"
        points = [
            MetricPoint(at=at, cpu=cpu, memory=mem, disk=disk, gpu_util=gpu, gpu_temp=temp)
            for at, cpu, mem, disk, gpu, temp in rows
        ]
    return MetricSeries(node=node, resolution=resolution, points=points)
