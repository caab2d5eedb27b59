"""The operator's overview: per database a status with its reasons (from the health check), the
last good backup, the next scheduled run, the last restore drill and the history of sizes and
durations; the space used in each destination; the most recent failures with their reasons."""

from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from ..conf import backup_settings
from ..models import Action, Backup, BackupStatus, Operation, OperationStatus
from ..storage import destinations
from .health import check_health
from .schedule import next_runs

# How many backups the charts draw, and how many failures are listed.
HISTORY_LENGTH = 60
FAILURES_LISTED = 10
UNFINISHED = (BackupStatus.PENDING, BackupStatus.RUNNING)
NOT_RESTORABLE = (BackupStatus.FAILED, BackupStatus.MISSING)


@dataclass
class HistoryPoint:
    created_at: datetime
    size_bytes: int
    duration_seconds: float | None


@dataclass
class DatabaseStatus:
    alias: str
    state: str  # "healthy", "stale", "failing" or "drills failing"
    reasons: list
    last_good: Backup | None
    next_run: datetime | None  # None when nothing is scheduled
    last_drill: Backup | None  # the latest backup checked by a restore drill
    history: list = field(default_factory=list)  # HistoryPoint, oldest first


@dataclass
class StorageUse:
    location: str  # the destination's name, as backups' ``locations`` have it
    where: str
    offsite: bool
    count: int
    size_bytes: int


@dataclass
class Failure:
    at: datetime
    action: str
    filename: str
    database: str
    reason: str


@dataclass
class Overview:
    checked_at: datetime
    healthy: bool
    scheduled: bool
    databases: list
    storages: list
    failures: list


def overview(*, actor, now=None):
    actor.require("view_backup")
    report = check_health(now)
    scheduled = backup_settings.ENABLED
    next_run = next_runs(backup_settings.SCHEDULE, count=1, now=now)[0] if scheduled else None
    return Overview(
        checked_at=report.checked_at,
        healthy=report.healthy,
        scheduled=scheduled,
        databases=[
            database_status(alias, facts, report.findings[alias], next_run) for alias, facts in report.databases.items()
        ],
        storages=storage_use(),
        failures=recent_failures(),
    )


def database_status(alias, facts, findings, next_run):
    """One status light: failing (no good backup, or the latest attempt failed), stale (the health
    check's age limit), drills failing (the latest verification failed), else healthy."""
    backups = Backup.objects.for_database(alias).defer("manifest")
    reasons = list(findings["problems"])
    latest_attempt = backups.exclude(status__in=UNFINISHED).order_by("-created_at").first()
    attempt_failed = latest_attempt is not None and latest_attempt.status == BackupStatus.FAILED
    if attempt_failed:
        reasons.insert(0, f"The latest backup attempt failed: {latest_attempt.error or 'no reason recorded'}")
    verification = facts["verification"]
    if facts["newest_backup_at"] is None or attempt_failed:
        state = "failing"
    elif findings["stale"]:
        state = "stale"
    elif verification is not None and not verification["passed"]:
        state = "drills failing"
    else:
        state = "healthy"
    history = backups.restorable().order_by("-created_at").values("created_at", "finished_at", "size_bytes")
    return DatabaseStatus(
        alias=alias,
        state=state,
        reasons=reasons,
        last_good=backups.newest(),
        next_run=next_run,
        last_drill=backups.filter(verification__level="restore").order_by("-verified_at").first(),
        history=[
            HistoryPoint(
                created_at=row["created_at"],
                size_bytes=row["size_bytes"] or 0,
                duration_seconds=(row["finished_at"] - row["created_at"]).total_seconds()
                if row["finished_at"]
                else None,
            )
            for row in reversed(history[:HISTORY_LENGTH])
        ],
    )


def storage_use():
    """The verified copies in each destination, in destination order, counted from the catalog."""
    places = destinations()
    totals = {destination.name: [0, 0] for destination in places}
    for size, locations in Backup.objects.restorable().values_list("size_bytes", "locations"):
        for location in locations:
            if location in totals:  # not a destination that is no longer configured
                totals[location][0] += 1
                totals[location][1] += size or 0
    return [
        StorageUse(destination.name, destination.storage.where, destination.offsite, *totals[destination.name])
        for destination in places
    ]


def recent_failures():
    """Failed and missing backups, and failed restores, verifications and other operations,
    newest first. A failed backup is listed once, from its catalog row."""
    backups = Backup.objects.filter(status__in=NOT_RESTORABLE).defer("manifest").order_by("-created_at")
    operations = (
        Operation.objects.filter(status=OperationStatus.FAILED).exclude(action=Action.CREATE).order_by("-started_at")
    )
    failures = [
        Failure(
            at=backup.finished_at or backup.created_at,
            action="backup",
            filename=backup.filename,
            database=backup.database,
            reason=backup.error
            or ("The file is missing from the backup storage." if backup.status == BackupStatus.MISSING else ""),
        )
        for backup in backups[:FAILURES_LISTED]
    ] + [
        Failure(
            at=operation.finished_at or operation.started_at,
            action=operation.get_action_display(),
            filename=operation.filename,
            database=operation.database,
            reason=operation.message,
        )
        for operation in operations[:FAILURES_LISTED]
    ]
    failures.sort(key=lambda failure: failure.at or timezone.now(), reverse=True)
    return failures[:FAILURES_LISTED]
