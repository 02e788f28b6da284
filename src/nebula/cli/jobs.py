"""`nebula jobs ...` and `nebula worker`: the job queue from the command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from nebula.cli.common import (
    JsonOption,
    err_console,
    friendly,
    out,
    print_json,
    run,
    settings_with_schema,
    with_db,
)
from nebula.kernel.audit import Actor
from nebula.kernel.db import Database
from nebula.kernel.errors import InvalidInput
from nebula.kernel.events import build_event_bus
from nebula.kernel.jobs import (
    JobInfo,
    JobQueue,
    JobSpec,
    Scheduler,
    Wakeup,
    Worker,
    default_registry,
)
from nebula.kernel.jobs.queue import JobAction
from nebula.kernel.jobs.schemas import JobEventInfo

jobs_app = typer.Typer(help="The durable job queue.", no_args_is_help=True)
schedule_app = typer.Typer(help="Cron schedules that enqueue jobs.", no_args_is_help=True)
jobs_app.add_typer(schedule_app, name="schedule")

JobId = Annotated[int, typer.Argument(help="Job id.", min=1)]


def job_queue(db: Database, lease_s: float = 30.0) -> JobQueue:
    return JobQueue(db, default_registry(), Wakeup.for_database(db.url), lease_s=lease_s)


def parse_payload(text: str) -> dict[str, Any]:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInput(
            f"--payload is not valid JSON: {err.msg} at character {err.pos}."
        ) from err
    if not isinstance(payload, dict):
        raise InvalidInput("--payload must be a JSON object, e.g. '{\"sleep\": 1}'.")
    return payload


def job_spec(**fields: Any) -> JobSpec:
    """A JobSpec from command-line values; out-of-range options are the user's to fix."""
    try:
        return JobSpec(**fields)
    except ValidationError as err:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
            for e in err.errors()
        )
        raise InvalidInput(f"Invalid job: {problems}") from err


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def job_dict(job: JobInfo) -> dict[str, Any]:
    return job.model_dump(mode="json")


@jobs_app.command("enqueue")
@friendly
def enqueue(
    kind: Annotated[str, typer.Argument(help="Job kind, e.g. system.noop.")],
    payload: Annotated[str, typer.Option(help="JSON object for the job's handler.")] = "{}",
    count: Annotated[int, typer.Option(help="How many copies to enqueue.", min=1)] = 1,
    capability: Annotated[
        list[str] | None,
        typer.Option(help="A capability the worker must have (repeatable), e.g. gpu."),
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    concurrency_key: Annotated[
        str | None, typer.Option(help="Jobs sharing this key run one at a time.")
    ] = None,
    max_attempts: Annotated[int, typer.Option(help="Tries before it fails.", min=1)] = 3,
    requires_approval: Annotated[
        bool, typer.Option(help="Wait for `nebula jobs approve` before running.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Add jobs to the queue."""
    spec = job_spec(
        kind=kind,
        payload=parse_payload(payload),
        capabilities=capability or [],
        priority=priority,
        concurrency_key=concurrency_key,
        max_attempts=max_attempts,
        requires_approval=requires_approval,
    )
    settings = settings_with_schema()
    ids = run(with_db(settings, lambda db: job_queue(db).enqueue_many(Actor.cli(), spec, count)))
    if as_json:
        print_json({"ids": ids})
    elif len(ids) == 1:
        out.print(f"Enqueued job {ids[0]} ({kind}).", highlight=False)
    else:
        out.print(f"Enqueued {len(ids)} {kind} jobs ({ids[0]}-{ids[-1]}).", highlight=False)


@jobs_app.command("list")
@friendly
def list_jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).", min=1)] = 1000,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    settings = settings_with_schema()
    jobs, total = run(
        with_db(settings, lambda db: job_queue(db).list_jobs(status=status, kind=kind, limit=limit))
    )
    if as_json:
        print_json([job_dict(j) for j in jobs])
        return
    table = Table("id", "kind", "status", "attempts", "progress", "created", "error")
    for j in jobs:
        table.add_row(
            str(j.id),
            j.kind,
            j.status,
            f"{j.attempts}/{j.max_attempts}",
            f"{j.progress}%",
            f"{j.created_at:%Y-%m-%d %H:%M:%S}",
            (j.error or "")[:60],
        )
    out.print(table)
    if total > len(jobs):
        err_console.print(f"{len(jobs)} of {total} shown; use --limit for more.")


@jobs_app.command("show")
@friendly
def show(job_id: JobId, as_json: JsonOption = False) -> None:
    """One job with its progress and log."""
    settings = settings_with_schema()

    async def load(db: Database) -> tuple[JobInfo, list[JobEventInfo]]:
        queue = job_queue(db)
        return await queue.get(job_id), await queue.events(job_id)

    job, events = run(with_db(settings, load))
    if as_json:
        print_json({**job_dict(job), "events": [e.model_dump(mode="json") for e in events]})
        return
    for key, value in job_dict(job).items():
        out.print(f"[bold]{key}[/]: {value}", highlight=False)
    for event in events:
        out.print(f"  {event.at:%H:%M:%S} {event.kind}: {event.message}", highlight=False)


def _act(action: JobAction, job_id: int, as_json: bool) -> None:
    settings = settings_with_schema()

    async def apply(db: Database) -> JobInfo:
        return await job_queue(db).act(Actor.cli(), job_id, action)

    job = run(with_db(settings, apply))
    if as_json:
        print_json(job_dict(job))
    elif action == "cancel" and job.status == "running":
        out.print(f"Job {job_id} is running; its worker was asked to stop it.", highlight=False)
    else:
        out.print(f"Job {job_id} is now {job.status}.", highlight=False)


@jobs_app.command("cancel")
@friendly
def cancel(job_id: JobId, as_json: JsonOption = False) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    _act("cancel", job_id, as_json)


@jobs_app.command("retry")
@friendly
def retry(job_id: JobId, as_json: JsonOption = False) -> None:
    """Queue a failed or cancelled job again."""
    _act("retry", job_id, as_json)


@jobs_app.command("approve")
@friendly
def approve(job_id: JobId, as_json: JsonOption = False) -> None:
    """Let a job that awaits approval run."""
    _act("approve", job_id, as_json)


@jobs_app.command("reject")
@friendly
def reject(job_id: JobId, as_json: JsonOption = False) -> None:
    """Refuse a job that awaits approval (it is cancelled)."""
    _act("reject", job_id, as_json)


@friendly
def worker(
    capabilities: Annotated[
        str, typer.Option(help="What this machine offers, comma-separated: docker,gpu.")
    ] = "",
    concurrency: Annotated[int, typer.Option(help="Jobs run at once.", min=1, max=256)] = 4,
    burst: Annotated[bool, typer.Option(help="Exit when no runnable job is left.")] = False,
) -> None:
    """Run jobs from the queue until stopped (SIGTERM gives running jobs back)."""
    settings = settings_with_schema()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )

    async def work(db: Database) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # Windows has no signal handlers
                loop.add_signal_handler(sig, stop.set)
        registry = default_registry()
        # With Redis, progress reaches the dashboard live from any machine; without it
        # the job page reads it from the database every few seconds.
        bus = build_event_bus(settings, db, source="worker") if settings.redis_url else None
        queue = JobQueue(
            db, registry, Wakeup.for_database(db.url), lease_s=settings.job_lease_s, bus=bus
        )
        runner = Worker(
            queue,
            registry,
            capabilities=split_list(capabilities),
            concurrency=concurrency,
            burst=burst,
            scheduler=None if burst else Scheduler(queue),
        )
        err_console.print(
            f"Worker {runner.name}: concurrency {concurrency}, capabilities "
            f"{', '.join(runner.capabilities) or 'none'}{', burst' if burst else ''}",
            highlight=False,
        )
        try:
            stats = await runner.run(stop)
        finally:
            if bus is not None:
                await bus.aclose()
        err_console.print(
            f"Worker {runner.name} stopped: {stats.succeeded} succeeded, {stats.failed} failed, "
            f"{stats.cancelled} cancelled, {stats.released} given back.",
            highlight=False,
        )

    run(with_db(settings, work))


@schedule_app.command("add")
@friendly
def schedule_add(
    name: Annotated[str, typer.Argument(help="A name for the schedule.")],
    kind: Annotated[str, typer.Argument(help="Job kind to enqueue.")],
    cron: Annotated[str, typer.Option(help="Cron expression, e.g. '*/5 * * * *'.")],
    payload: Annotated[str, typer.Option(help="JSON object for the job's handler.")] = "{}",
    capability: Annotated[
        list[str] | None, typer.Option(help="A capability the worker must have (repeatable).")
    ] = None,
) -> None:
    """Enqueue KIND at every tick of CRON (workers and `nebula serve` run the schedules)."""
    spec = job_spec(kind=kind, payload=parse_payload(payload), capabilities=capability or [])
    settings = settings_with_schema()
    info = run(
        with_db(settings, lambda db: Scheduler(job_queue(db)).add(Actor.cli(), name, cron, spec))
    )
    out.print(
        f"Schedule {info.name}: {kind} at '{cron}', next {info.next_run_at:%Y-%m-%d %H:%M} UTC.",
        highlight=False,
    )


@schedule_app.command("list")
@friendly
def schedule_list(as_json: JsonOption = False) -> None:
    """List cron schedules."""
    settings = settings_with_schema()
    items = run(with_db(settings, lambda db: Scheduler(job_queue(db)).list_schedules()))
    if as_json:
        print_json([i.model_dump(mode="json") for i in items])
        return
    table = Table("name", "cron", "kind", "next run", "last run")
    for i in items:
        table.add_row(
            i.name,
            i.cron,
            i.kind,
            f"{i.next_run_at:%Y-%m-%d %H:%M}",
            f"{i.last_run_at:%Y-%m-%d %H:%M}" if i.last_run_at else "never",
        )
    out.print(table)


@schedule_app.command("remove")
@friendly
def schedule_remove(name: Annotated[str, typer.Argument(help="The schedule's name.")]) -> None:
    """Delete a cron schedule."""
    settings = settings_with_schema()
    run(with_db(settings, lambda db: Scheduler(job_queue(db)).remove(Actor.cli(), name)))
    out.print(f"Removed schedule {name}.", highlight=False)
