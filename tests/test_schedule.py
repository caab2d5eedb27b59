"""Scheduled backups: the crontab lines, jobs run as cron runs them (bare environment, several
hosts at once, a killed lock holder), the log lines, and the schedule as shown to people."""

import logging
import os
import re
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django_crontab.crontab import Crontab

from backups.conf import cronjobs
from backups.engines.postgresql import LOCK_APPLICATION, LOCK_PURPOSES
from backups.models import Backup, BackupStatus
from backups.services.schedule import run_scheduled_backups, run_scheduled_cleanup

from .conftest import execute, fetch, raw_postgres_connection

pytestmark = pytest.mark.django_db(transaction=True)
PROJECT = Path(__file__).resolve().parent.parent
SCHEDULE = "0 0 1 1 *"
CRON_ENV = {"SHELL": "/bin/sh", "LOGNAME": "root", "PATH": "/usr/bin:/bin"}  # all cron gives a job


def enabled_jobs(**values):
    return cronjobs({"BACKUP_ENABLED": "true", **values})


def test_crontab_lines_for_given_settings(settings):
    settings.CRONJOBS = enabled_jobs(BACKUP_SCHEDULE="0 */6 * * *", BACKUP_CLEANUP_SCHEDULE="15 4 * * 0")
    crontab = Crontab(readonly=True, verbosity=0)
    crontab.add_jobs()
    lines = [line.rstrip("\n") for line in crontab.crontab_lines]
    command = f"{re.escape(sys.executable)} {re.escape(str(PROJECT / 'manage.py'))} crontab run [0-9a-f]{{32}}"
    for line, schedule in zip(lines, ["0 */6 * * *", "15 4 * * 0", "45 4 * * *"], strict=True):
        assert re.match(rf"^{re.escape(schedule)} {command} # hoppybrew-backups$", line), line


def test_no_jobs_when_scheduling_is_disabled():
    assert cronjobs({"BACKUP_ENABLED": "false", "BACKUP_SCHEDULE": "* * * * *"}) == []


@pytest.fixture
def fake_crontab(tmp_path, settings):
    """A stand-in for /usr/bin/crontab that keeps the table in a file, not the system's."""
    table = tmp_path / "crontab.txt"
    script = tmp_path / "crontab"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-l" ]; then cat {table} 2>/dev/null; else cp "$1" {table}; fi\n')
    script.chmod(0o755)
    settings.CRONTAB_EXECUTABLE = str(script)
    return table


def test_crontab_add_installs_the_jobs_and_logs_that_the_scheduler_started(fake_crontab, settings, caplog):
    settings.CRONJOBS = enabled_jobs()
    with caplog.at_level(logging.INFO, logger="backups"):
        call_command("crontab", "add", verbosity=0)
    assert fake_crontab.read_text().count("# hoppybrew-backups") == 3
    assert "Backup scheduler started" in caplog.text


def test_crontab_add_fails_loudly_when_cron_is_not_there(settings):
    settings.CRONJOBS = enabled_jobs()
    settings.CRONTAB_EXECUTABLE = "/nonexistent/crontab"
    with pytest.raises(CommandError, match="Is cron installed"):
        call_command("crontab", "add", verbosity=0)


# -- jobs run as cron runs them ---------------------------------------------------------------


@pytest.fixture
def cron_job(tmp_path, settings, backup_dir):
    """The scheduled backup's crontab command, configured only through an env file named on
    the line itself; returns a function that runs it the way cron does."""
    database = connections["default"].settings_dict
    env_file = tmp_path / "cron.env"
    env_file.write_text(
        "\n".join(
            [
                f"DATABASE_URL=postgres://{database['USER']}:{database['PASSWORD']}@127.0.0.1:5432/{database['NAME']}",
                f"BACKUP_DIR={backup_dir}",
                "BACKUP_ENABLED=true",
                # A run that began long ago: replicas started on either side of a minute's
                # turn still belong to the same run.
                f"BACKUP_SCHEDULE={SCHEDULE}",
                "DJANGO_SECRET_KEY=cron-test",
            ]
        )
    )
    settings.CRONJOBS = enabled_jobs(BACKUP_SCHEDULE=SCHEDULE)
    settings.CRONTAB_COMMAND_PREFIX = f"DJANGO_ENV_FILE={env_file}"
    crontab = Crontab(readonly=True, verbosity=0)
    crontab.add_jobs()
    backup_line = crontab.crontab_lines[0]
    command = backup_line.split(None, 5)[5].rsplit(" # ", 1)[0]

    def start():
        return subprocess.Popen(
            [
                "env",
                "-i",
                *(f"{k}={v}" for k, v in {**CRON_ENV, "HOME": str(tmp_path)}.items()),
                "/bin/sh",
                "-c",
                command,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    return start


def test_the_cron_command_under_env_i_makes_a_backup_and_logs_it(cron_job, backup_dir):
    process = cron_job()
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert "Running scheduled backup" in output
    completed = re.search(r"Scheduled backup completed: (\S+\.sql\.gz), [\d.]+ \w+ in \d+:\d\d", output)
    assert completed, output
    backup = Backup.objects.get(filename=completed.group(1))
    assert (backup.trigger, backup.origin, backup.status) == ("scheduled", "cron", "succeeded")
    assert (backup_dir / backup.filename).exists()


def test_a_job_whose_checks_fail_still_records_and_logs_its_failure(cron_job, tmp_path):
    """cron's `crontab run` must reach the service even with a bad setting: a system check
    stopping it first would leave no failed row and no "Scheduled backup failed" line."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env_file = tmp_path / "cron.env"
    env_file.write_text(
        "\n".join(
            f"BACKUP_DIR={blocker / 'backups'}" if line.startswith("BACKUP_DIR=") else line
            for line in env_file.read_text().splitlines()
        )
    )
    process = cron_job()
    output = process.communicate(timeout=120)[0]
    assert "Scheduled backup failed: The backup storage (BACKUP_DIR: " in output, output
    assert "Not a directory. Nothing was written. Check that" in output, output
    assert Backup.objects.get(trigger="scheduled").status == BackupStatus.FAILED


def test_replicas_firing_together_make_exactly_one_backup(cron_job):
    processes = [cron_job() for _ in range(4)]
    outputs = [process.communicate(timeout=180)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert Backup.objects.filter(trigger="scheduled", status=BackupStatus.SUCCEEDED).count() == 1
    assert sum("Scheduled backup completed" in output for output in outputs) == 1
    assert sum("skipped" in output for output in outputs) == 3


def test_a_killed_lock_holder_does_not_block_the_next_run(cron_job):
    execute("default", "CREATE TABLE brew (id integer)")
    # Hold brew's lock so that the first job's pg_dump waits while the job holds its locks.
    blocker = raw_postgres_connection()
    blocker.cursor().execute("BEGIN; LOCK TABLE brew IN ACCESS EXCLUSIVE MODE")
    first = cron_job()
    try:
        deadline = time.monotonic() + 60
        held = (
            f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = {LOCK_APPLICATION} "
            f"AND objid = {LOCK_PURPOSES['schedule']} "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        while fetch("default", held) != [(1,)]:
            assert time.monotonic() < deadline, "the first job never took the schedule lock"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)  # the job and its pg_dump die without cleaning up
        first.wait()
    finally:
        blocker.close()
    second = cron_job()
    output = second.communicate(timeout=120)[0]
    assert "Scheduled backup completed" in output, output
    assert Backup.objects.filter(trigger="scheduled", status=BackupStatus.SUCCEEDED).count() == 1


def test_a_failed_scheduled_backup_is_recorded_and_logged(settings, extra_alias, caplog):
    settings.BACKUP_DATABASES = extra_alias("unreachable", PORT="1")
    with caplog.at_level(logging.INFO, logger="backups"):
        assert run_scheduled_backups() == []
    assert "Running scheduled backup" in caplog.text
    failed = [
        r for r in caplog.records if r.levelno == logging.ERROR and r.message.startswith("Scheduled backup failed: ")
    ]
    assert failed and "Cannot connect" in failed[0].message
    row = Backup.objects.get(database="unreachable")
    assert (row.trigger, row.status) == ("scheduled", BackupStatus.FAILED)
    assert "Cannot connect" in row.error


def test_the_cleanup_job_logs_its_run(caplog, settings):
    with caplog.at_level(logging.INFO, logger="backups"):
        run_scheduled_cleanup()
    assert "Running scheduled backup cleanup" in caplog.text
    assert "Scheduled backup cleanup completed" in caplog.text


# -- the schedule as people see it --------------------------------------------------------------


def test_the_schedule_endpoint(api, settings):
    settings.BACKUP_ENABLED = "true"
    settings.BACKUP_SCHEDULE = "0 */6 * * *"
    settings.BACKUP_KEEP_WEEKLY = "4"
    run_scheduled_backups()
    body = api.get("/backups/schedule").json()
    assert body["enabled"] is True
    assert body["backup"]["schedule"] == "0 */6 * * *"
    assert body["backup"]["description"] == "Every 6 hours"
    assert len(body["backup"]["next_runs"]) == 3
    assert body["cleanup"]["schedule"] == "30 3 * * *"
    assert body["retention"] == {"days": 30, "min_count": 3, "keep_daily": None, "keep_weekly": 4, "keep_monthly": None}
    assert body["last_scheduled_backup"]["status"] == "succeeded"


def test_the_schedule_command():
    out = StringIO()
    call_command("backups", "schedule", stdout=out)
    text = out.getvalue()
    assert "Scheduled backups: disabled" in text
    assert "0 2 * * *  (At 02:00 AM" in text
    assert "Last scheduled backup: none yet" in text
