"""Retention with controlled clocks: by age, the minimum count that protects the last good
backups, grandfather-father-son, failed attempts, per database, and dry runs."""

import os
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest

from backups.models import Backup, BackupStatus
from backups.services import Actor, cleanup_backups
from backups.services.retention import Policy, plan

NOW = datetime(2024, 11, 8, 12, 0, tzinfo=UTC)


def backup(age, status=BackupStatus.SUCCEEDED, database="default", name=None):
    created = NOW - age
    return Backup(
        filename=name or f"hoppybrew_backup_{database}_{created:%Y%m%d_%H%M%S}.sql.gz",
        database=database,
        status=status,
        created_at=created,
        size_bytes=100,
    )


def names(backups):
    return {b.filename for b in backups}


def test_by_days_deletes_what_is_older_than_the_retention_period():
    daily = [backup(timedelta(days=d)) for d in range(40)]
    kept, deleted = plan(daily, Policy(retention_days=30, min_count=3), NOW)
    assert names(deleted) == names(daily[31:])  # day 30 is exactly at the cutoff and stays
    assert set(kept) == names(daily[:31])
    assert kept[daily[0].filename] == ["younger than 30 days", "one of the newest 3 successful backups"]


def test_nothing_new_for_40_days_still_keeps_the_newest_three():
    stale = [backup(timedelta(days=40 + d)) for d in range(10)]
    kept, deleted = plan(stale, Policy(retention_days=30, min_count=3), NOW)
    assert set(kept) == names(stale[:3])
    assert names(deleted) == names(stale[3:])


def test_failed_attempts_never_count_as_kept_backups():
    failed = [backup(timedelta(days=35, hours=h), status=BackupStatus.FAILED) for h in range(3)]
    missing = [backup(timedelta(days=36), status=BackupStatus.MISSING)]
    recent_failure = [backup(timedelta(days=1), status=BackupStatus.FAILED)]
    good = [backup(timedelta(days=50 + d)) for d in range(5)]
    kept, deleted = plan(failed + missing + recent_failure + good, Policy(retention_days=30, min_count=3), NOW)
    assert set(kept) == names(good[:3])
    # Failed and missing rows past the retention period go; a recent failure stays as a record.
    assert names(deleted) == names(failed + missing + good[3:])


def test_grandfather_father_son_keeps_the_newest_of_each_period():
    every_six_hours = [backup(timedelta(hours=6 * i)) for i in range(4 * 120)]
    policy = Policy(retention_days=7, min_count=0, keep_daily=10, keep_weekly=4, keep_monthly=3)
    kept, deleted = plan(every_six_hours, policy, NOW)
    expected = {b.filename for b in every_six_hours if b.created_at >= NOW - timedelta(days=7)}
    for count, period in ((10, "%Y-%m-%d"), (4, "week"), (3, "%Y-%m")):
        seen = []
        for b in every_six_hours:  # newest first
            key = b.created_at.isocalendar()[:2] if period == "week" else b.created_at.strftime(period)
            if key not in seen:
                seen.append(key)
                if len(seen) <= count:
                    expected.add(b.filename)
    assert set(kept) == expected
    assert names(deleted) == names(every_six_hours) - expected
    oldest_month = min(
        (b for b in every_six_hours if b.filename in kept and "newest of month" in " ".join(kept[b.filename])),
        key=lambda b: b.created_at,
    )
    assert oldest_month.created_at.strftime("%Y-%m") == "2024-09"


def test_an_empty_catalog_deletes_nothing():
    assert plan([], Policy(retention_days=30, min_count=3), NOW) == ({}, [])


# -- cleanup against the catalog and the directory ----------------------------------------------


def stored(backup_dir, age, database="default"):
    """A catalog row with its file and manifest, ``age`` old."""
    row = backup(age, database=database)
    row.engine = "postgresql"
    row.database_name = "x"
    row.save()
    backup_dir.mkdir(exist_ok=True)
    (backup_dir / row.filename).write_bytes(b"x" * 100)
    (backup_dir / f"{row.filename}.json").write_text("{}")
    return row


@pytest.mark.django_db
def test_cleanup_applies_the_policy_per_database_and_dry_run_changes_nothing(backup_dir, settings):
    settings.BACKUP_RETENTION_MIN_COUNT = "2"
    old_default = [stored(backup_dir, timedelta(days=60 + d)) for d in range(4)]
    old_other = [stored(backup_dir, timedelta(days=60 + d), database="analytics") for d in range(3)]
    before = sorted(p.name for p in backup_dir.iterdir())

    dry = cleanup_backups(actor=Actor.command(), dry_run=True, now=NOW)
    assert names(dry.deleted) == names(old_default[2:] + old_other[2:])
    assert sorted(p.name for p in backup_dir.iterdir()) == before
    assert Backup.objects.count() == 7

    done = cleanup_backups(actor=Actor.command(), now=NOW)
    assert names(done.deleted) == names(dry.deleted)
    assert set(done.kept) == names(old_default[:2] + old_other[:2])
    assert done.total_size_freed == 300
    remaining = {p.name for p in backup_dir.iterdir()}
    assert remaining == {n for b in old_default[:2] + old_other[:2] for n in (b.filename, f"{b.filename}.json")}


@pytest.mark.django_db
def test_cleanup_touches_only_its_own_files_and_old_leftovers(backup_dir):
    backup_dir.mkdir()
    host = socket.gethostname()
    foreign = backup_dir / "notes.txt"
    foreign.write_text("mine")
    lookalike = backup_dir / "hoppybrew_backup_20200101_000000.sql.gz"  # no manifest, no row
    lookalike.write_text("not ours")
    mine_running = backup_dir / f".hoppybrew_backup_20241108_110000.sql.gz.{os.getpid()}@{host}.partial"
    other_fresh = backup_dir / ".hoppybrew_backup_20241108_110000.sql.gz.4242@elsewhere.partial"
    other_old = backup_dir / ".hoppybrew_backup_20241101_110000.sql.gz.4242@elsewhere.partial"
    for partial in (mine_running, other_fresh, other_old):
        partial.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(other_old, (two_days_ago, two_days_ago))

    result = cleanup_backups(actor=Actor.command(), now=NOW)
    assert result.removed_partials == [other_old.name]
    assert foreign.exists() and lookalike.exists() and mine_running.exists() and other_fresh.exists()
    assert not other_old.exists()
