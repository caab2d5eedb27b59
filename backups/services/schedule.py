"""The scheduled jobs, and the schedule as people read it.

django-crontab runs the jobs with cron's bare environment and swallows their exceptions, so each
job records its own outcome: a catalog row (failed, with the reason) and a log line that
``grep -i backup`` finds. When several hosts run the same crontab, a per-database "schedule" lock
and a check for a backup already made in this run let exactly one of them do the work.
"""

import logging
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.db import DatabaseError, router

from ..conf import backup_settings
from ..engines import get_engine
from ..exceptions import BackupError, OperationInProgress, catalog_error, reason_of
from ..formatting import human_duration, human_size
from ..models import Backup, BackupStatus, Trigger
from .backups import create_backup, record_failed_attempt
from .health import check_health_quietly
from .journal import Actor
from .notify import notify
from .pings import ping
from .retention import Policy, cleanup_backups

logger = logging.getLogger("backups")


def run_scheduled_backups(now=None):
    """The backup job: one backup of each database in BACKUP_DATABASES. Returns the new rows.
    The dead-man ping hears of the start and of the outcome of the whole run."""
    logger.info("Running scheduled backup")
    ping("start")
    made, failures = [], []
    try:
        for alias in backup_settings.DATABASES:
            outcome = run_scheduled_backup(alias, now=now)
            if outcome.backup is not None:
                made.append(outcome.backup)
            if outcome.failure is not None:
                failures.append(f"{alias}: {outcome.failure}")
    except Exception as exc:
        logger.exception("Scheduled backup: unexpected error")
        failures.append(reason_of(exc))
    if failures:
        ping("fail", "\n".join(failures))
    else:
        ping("success", "\n".join(f"{backup.database}: {summary(backup)}" for backup in made) or "nothing to do")
    check_health_quietly()
    return made


@dataclass(frozen=True)
class ScheduledRun:
    """What one database's scheduled backup came to: a backup, a failure, or neither (skipped)."""

    backup: Backup | None = None
    failure: str | None = None


def summary(backup):
    return f"{backup.filename}, {human_size(backup.size_bytes)} in {human_duration(backup.duration_seconds)}"


def run_scheduled_backup(alias, now=None):
    """Back up ``alias`` unless another host is doing it or has done it for this run.
    Failures are logged and announced, and recorded in the catalog when it can be reached, before
    they are returned."""
    actor = Actor.cron()
    engine = None
    with ExitStack() as stack:
        try:
            engine = get_engine(alias)
            stack.enter_context(engine.lock(exclusive=True, purpose="schedule"))
        except OperationInProgress:
            logger.info("Scheduled backup of %r skipped: another host or process is running it", alias)
            return ScheduledRun()
        except BackupError as exc:
            return scheduled_failure(alias, exc.message, engine=engine)
        run_started = previous_run(backup_settings.SCHEDULE, now)
        try:
            done = (
                Backup.objects.filter(
                    database=alias,
                    trigger=Trigger.SCHEDULED,
                    status=BackupStatus.SUCCEEDED,
                    created_at__gte=run_started,
                )
                .order_by("-created_at")
                .first()
            )
        except DatabaseError as exc:  # the catalog's database is down: said, not a traceback
            return scheduled_failure(alias, catalog_error(exc).message)
        if done is not None:
            logger.info("Scheduled backup of %r skipped: %s was already made for this run", alias, done.filename)
            return ScheduledRun()
        try:
            backup = create_backup(actor=actor, database=alias, trigger=Trigger.SCHEDULED)
        except OperationInProgress as exc:  # a restore holds the database: this run is lost
            return scheduled_failure(alias, exc.message, engine=engine)
        except BackupError as exc:  # create_backup has recorded the failed attempt
            return scheduled_failure(alias, exc.message)
        except Exception as exc:
            logger.exception("Scheduled backup of %r: unexpected error", alias)
            return scheduled_failure(alias, reason_of(exc))
    logger.info("Scheduled backup completed: %s", summary(backup))
    if backup_settings.NOTIFY_ON_SUCCESS:
        notify(
            f"Scheduled backup completed: {alias}",
            f"Scheduled backup of database {alias} completed: {summary(backup)}",
            outcome="success",
        )
    return ScheduledRun(backup=backup)


def scheduled_failure(alias, reason, engine=None):
    """Log and announce the failure; with ``engine``, also leave the failed row nothing else
    has written."""
    logger.error("Scheduled backup failed: %s", reason)
    notify(
        f"Scheduled backup failed: {alias}",
        f"The scheduled backup of database {alias} failed:\n{reason}",
        outcome="failure",
    )
    if engine is not None:
        try:
            record_failed_attempt(engine, actor=Actor.cron(), trigger=Trigger.SCHEDULED, reason=reason)
        except Exception:
            logger.exception("Could not record the failed scheduled backup of %r", alias)
    return ScheduledRun(failure=reason)


def run_scheduled_cleanup():
    """The cleanup job; one host at a time does it."""
    logger.info("Running scheduled backup cleanup")
    try:
        with get_engine(router.db_for_write(Backup)).lock(exclusive=True, purpose="cleanup"):
            result = cleanup_backups(actor=Actor.cron())
    except OperationInProgress:
        logger.info("Scheduled backup cleanup skipped: another host or process is running it")
        return None
    except Exception as exc:
        message = reason_of(exc)
        logger.error("Scheduled backup cleanup failed: %s", message, exc_info=not isinstance(exc, BackupError))
        notify("Scheduled backup cleanup failed", f"The scheduled cleanup failed:\n{message}", outcome="failure")
        return None
    finally:
        check_health_quietly()
    outcome = f"deleted {len(result.deleted)} backups ({human_size(result.total_size_freed)}), kept {len(result.kept)}"
    logger.info("Scheduled backup cleanup completed: %s", outcome)
    if backup_settings.NOTIFY_ON_SUCCESS:
        notify("Scheduled backup cleanup completed", f"The scheduled cleanup {outcome}.", outcome="success")
    return result


def local_now(now=None):
    """Cron reads its schedule in the system's local time, not Django's TIME_ZONE."""
    return (now or datetime.now().astimezone()).astimezone()


def previous_run(expression, now=None):
    """When the run in progress started: the latest fire time at or before ``now``."""
    from croniter import croniter  # its import runs a subprocess (platform.architecture): not at start-up

    return croniter(expression, local_now(now) + timedelta(seconds=1)).get_prev(datetime)


def next_runs(expression, count=3, now=None):
    from croniter import croniter

    schedule = croniter(expression, local_now(now))
    return [schedule.get_next(datetime) for _ in range(count)]


def describe(expression):
    from cron_descriptor import get_description

    return get_description(expression)


def schedule_status(*, actor, now=None):
    """What is scheduled, in words and as given, the next runs, retention, and the last outcome."""
    actor.require("view_backup")
    jobs = {}
    for name, expression in (
        ("backup", backup_settings.SCHEDULE),
        ("cleanup", backup_settings.CLEANUP_SCHEDULE),
        ("verification", backup_settings.VERIFY_SCHEDULE),
    ):
        if expression is None:
            jobs[name] = None
            continue
        jobs[name] = {
            "schedule": expression,
            "description": describe(expression),
            "next_runs": [moment.isoformat() for moment in next_runs(expression, now=now)],
        }
    policy = Policy.from_settings()
    last = Backup.objects.filter(trigger=Trigger.SCHEDULED).defer("manifest").order_by("-created_at").first()
    return {
        "enabled": backup_settings.ENABLED,
        "timezone": local_now(now).tzname(),
        "databases": backup_settings.DATABASES,
        **jobs,
        "retention": {("days" if name == "retention_days" else name): value for name, value in asdict(policy).items()},
        "last_scheduled_backup": None
        if last is None
        else {
            "filename": last.filename,
            "database": last.database,
            "created_at": last.created_at.isoformat(),
            "status": last.status,
            "error": last.error,
        },
    }
