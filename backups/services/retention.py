"""Retention: which backups cleanup deletes, and why every other one is kept.

Per database: successful backups younger than BACKUP_RETENTION_DAYS are kept; so are the newest
BACKUP_RETENTION_MIN_COUNT successful ones however old (if backups stop, cleanup can never delete
the last good ones); optionally the newest of each of the last N days, weeks and months that
have backups (BACKUP_KEEP_DAILY/WEEKLY/MONTHLY). Failed attempts and rows whose file vanished
never count as kept backups; their rows go once they are past the retention period.

A destination of BACKUP_DESTINATIONS may have a policy of its own (any of those options, e.g. a
year of monthly copies off-site and a week on the local disk): each destination's copies are
kept by its policy, and a backup goes only when no destination keeps it.
"""

import logging
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial

from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.utils import timezone

from ..conf import backup_settings
from ..engines import get_engine
from ..exceptions import BackupError, OperationInProgress
from ..models import Action, Backup, BackupStatus
from ..storage import destinations
from .backups import remove_backup_files
from .catalog import sync_catalog
from .copies import remove_copies
from .journal import journal

logger = logging.getLogger("backups")
# A scratch database marked longer ago than this is one a killed process left: no drill lasts a day.
STALE_SCRATCH_HOURS = 24

FINISHED = (BackupStatus.SUCCEEDED, BackupStatus.FAILED, BackupStatus.MISSING)


@dataclass
class CleanupResult:
    cleanup_date: object
    retention_days: int
    dry_run: bool
    deleted: list = field(default_factory=list)
    kept: dict = field(default_factory=dict)  # filename -> reasons
    deleted_attempts: list = field(default_factory=list)
    removed_partials: list = field(default_factory=list)
    removed_copies: list = field(default_factory=list)  # (backup, [destination]) kept elsewhere
    dropped_undo_databases: list = field(default_factory=list)  # (alias, name) left by switch restores
    dropped_interrupted_loads: list = field(default_factory=list)  # (alias, name) left by killed switch restores
    dropped_scratches: list = field(default_factory=list)  # (alias, name) left by killed drills

    @property
    def total_size_freed(self):
        return sum(backup.size_bytes or 0 for backup in self.deleted)


@dataclass(frozen=True)
class Policy:
    retention_days: int
    min_count: int
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None

    @classmethod
    def from_settings(cls):
        return cls(
            retention_days=backup_settings.RETENTION_DAYS,
            min_count=backup_settings.RETENTION_MIN_COUNT,
            keep_daily=backup_settings.KEEP_DAILY,
            keep_weekly=backup_settings.KEEP_WEEKLY,
            keep_monthly=backup_settings.KEEP_MONTHLY,
        )

    def with_overrides(self, overrides):
        """This policy with a destination's own (option, value) pairs in place."""
        return replace(self, **dict(overrides))


def plan(backups, policy, now):
    """Split one database's finished backups into (kept: {filename: reasons}, deleted: [backup]).

    ``backups`` may be in any order; nothing here touches storage or the database.
    """
    cutoff = now - timedelta(days=policy.retention_days)
    good = sorted((b for b in backups if b.status == BackupStatus.SUCCEEDED), key=lambda b: b.created_at, reverse=True)
    kept = {}

    def keep(backup, reason):
        kept.setdefault(backup.filename, []).append(reason)

    for index, backup in enumerate(good):
        if backup.created_at >= cutoff:
            keep(backup, f"younger than {policy.retention_days} days")
        if index < policy.min_count:
            keep(backup, f"one of the newest {policy.min_count} successful backups")
    periods = (
        (policy.keep_daily, "day", lambda moment: moment.strftime("%Y-%m-%d")),
        (policy.keep_weekly, "week", lambda moment: "{:04d}-W{:02d}".format(*moment.isocalendar()[:2])),
        (policy.keep_monthly, "month", lambda moment: moment.strftime("%Y-%m")),
    )
    for count, unit, period_of in periods:
        if not count:
            continue
        seen = []
        for backup in good:  # newest first, so the first of each period is its newest
            period = period_of(timezone.localtime(backup.created_at))
            if period in seen:
                continue
            seen.append(period)
            if len(seen) > count:
                break
            keep(backup, f"newest of {unit} {period}")
    deleted = [
        b for b in backups if b.filename not in kept and (b.status == BackupStatus.SUCCEEDED or b.created_at < cutoff)
    ]
    return kept, deleted


def cleanup_backups(*, actor, dry_run=False, now=None):
    """Apply the retention policies to every database's backups (or only report, on a dry run)."""
    now = now or timezone.now()
    policy = Policy.from_settings()
    targets = [(destination, policy.with_overrides(destination.retention)) for destination in destinations()]
    result = CleanupResult(cleanup_date=now, retention_days=policy.retention_days, dry_run=dry_run)
    with journal(Action.CLEANUP, actor, permission="delete_backup") as operation:
        result.removed_partials = sync_catalog(remove_partials=not dry_run).removed_partials
        finished = list(Backup.objects.filter(status__in=FINISHED).defer("manifest"))
        for database in sorted({backup.database for backup in finished}):
            plan_database([b for b in finished if b.database == database], policy, targets, now, result)
        if not dry_run:
            for backup in result.deleted + result.deleted_attempts:
                remove_backup_files(backup)  # an attempt may have left a manifest, in any destination
            for backup, names in result.removed_copies:
                remove_copies(backup, names)
        result.dropped_undo_databases = drop_expired_undo_databases(now, dry_run)
        result.dropped_interrupted_loads = drop_every_interrupted_load(dry_run)
        result.dropped_scratches = drop_stale_scratches(now, dry_run)
        operation.message = (
            f"{'Would delete' if dry_run else 'Deleted'} {len(result.deleted)} backups "
            f"({result.total_size_freed} bytes), kept {len(result.kept)}"
        )
        if result.removed_copies:
            operation.message += f", {len(result.removed_copies)} copies past their destination's retention"
        operation.details = {
            "deleted_files": [b.filename for b in result.deleted],
            "removed_copies": {backup.filename: names for backup, names in result.removed_copies},
            "dropped_undo_databases": [name for _alias, name in result.dropped_undo_databases],
            "dropped_interrupted_loads": [name for _alias, name in result.dropped_interrupted_loads],
            "dropped_scratches": [name for _alias, name in result.dropped_scratches],
            "dry_run": dry_run,
        }
    return result


def plan_database(backups, policy, targets, now, result):
    """Fill ``result`` for one database: failed attempts by the default policy, successful
    backups by each destination's policy over the copies it holds."""
    _kept, deleted = plan(backups, policy, now)
    result.deleted_attempts += [backup for backup in deleted if backup.status != BackupStatus.SUCCEEDED]
    succeeded = [backup for backup in backups if backup.status == BackupStatus.SUCCEEDED]
    names = {destination.name for destination, _policy in targets}
    dropped = {}
    for destination, own_policy in targets:
        # A copy the catalog places nowhere known (older rows) counts as held by every destination.
        held = [b for b in succeeded if destination.name in b.locations or not names & set(b.locations)]
        kept, deleted = plan(held, own_policy, now)
        for filename, reasons in kept.items():
            listed = result.kept.setdefault(filename, [])
            for reason in reasons:
                reason = f"{destination.name}: {reason}" if destination.retention else reason
                if reason not in listed:
                    listed.append(reason)
        for backup in deleted:
            if destination.name in backup.locations:
                dropped.setdefault(backup.filename, []).append(destination.name)
    for backup in succeeded:
        if backup.filename not in result.kept:
            result.deleted.append(backup)
        elif backup.filename in dropped:
            result.removed_copies.append((backup, dropped[backup.filename]))


def drop_expired_undo_databases(now, dry_run=False):
    """Drop the databases that switch restores replaced, once BACKUP_RESTORE_KEEP_OLD_HOURS have
    passed; returns (alias, name) of each. A database out of reach is skipped, not fatal."""
    expired = now - timedelta(hours=backup_settings.RESTORE_KEEP_OLD_HOURS)

    def drop_expired(engine):
        for name, made_at in engine.undo_databases():
            if made_at <= expired:
                if not dry_run:
                    engine.drop_undo_database(name)
                yield name

    return on_every_database("Undo databases of", drop_expired)


def drop_every_interrupted_load(dry_run=False):
    """``drop_interrupted_loads`` for every database that no restore is running on now; returns
    (alias, name) of each. A database out of reach, or being restored, is skipped, not fatal."""

    def drop_unless_restoring(engine):
        if not engine.interrupted_loads():
            return []
        with engine.lock(exclusive=False):  # as a backup does: a restore cannot start meanwhile
            return drop_interrupted_loads(engine, dry_run)

    return on_every_database("Databases left beside", drop_unless_restoring)


def drop_stale_scratches(now, dry_run=False):
    """Drop the scratch databases that drills and model restores killed midway left (marked more
    than ``STALE_SCRATCH_HOURS`` ago, without sessions); returns (alias, name) of each. A
    database out of reach is skipped, not fatal."""
    made_before = now - timedelta(hours=STALE_SCRATCH_HOURS)

    def drop_stale(engine):
        drop = partial(engine.drop_stale_scratch, made_before=made_before)
        return drop_leftovers(
            engine, engine.stale_scratches(made_before), drop, "a killed drill or model restore", dry_run
        )

    return on_every_database("Scratch databases of", drop_stale)


def on_every_database(what, work):
    """(alias, name) for each name ``work(engine)`` returns, for every configured database; one
    out of reach (or being restored, or with a bad BACKUP_VERIFY_DATABASE_URL) is skipped and said."""
    done = []
    for alias in sorted(connections.settings):
        try:
            for name in work(get_engine(alias)):  # one by one: those dropped before a failure count
                done.append((alias, name))
        except OperationInProgress:
            logger.info("%s %s not checked: a restore of it is running", what, alias)
        except (BackupError, ImproperlyConfigured) as exc:
            logger.warning("%s %s not checked: %s", what, alias, getattr(exc, "message", exc))
    return done


def drop_interrupted_loads(engine, dry_run=False, warnings=None):
    """Drop the databases that restores beside ``engine``'s database made and could not drop
    themselves (their process was killed during the load), each a copy of the database's size;
    returns the names dropped. The caller holds the database's ``operations`` lock, which keeps
    out any restore that could still be loading one."""
    return drop_leftovers(
        engine, engine.interrupted_loads(), engine.drop_interrupted_load, "an interrupted restore", dry_run, warnings
    )


def drop_leftovers(engine, names, drop, left_by, dry_run=False, warnings=None):
    """Drop each of ``names`` with ``drop(name)`` (False: gone meanwhile); returns those dropped.
    One that has sessions is left, and said in the log and in ``warnings``."""
    dropped = []
    for name in names:
        if not dry_run:
            try:
                if not drop(name):
                    continue
            except BackupError as exc:
                logger.warning("A database %s left (%s): %s", left_by, engine.alias, exc.message)
                if warnings is not None:
                    warnings.append(f"A database that {left_by} left beside this one: {exc.message}")
                continue
            logger.warning("Dropped %s, a database that %s left (%s)", name, left_by, engine.alias)
        dropped.append(name)
    return dropped
