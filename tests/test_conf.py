"""Configuration: defaults, parsing at the moment of use, and loud failures naming the variable."""

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from backups import checks
from backups.conf import backup_settings, cronjobs, from_environment, parse_cron

PROJECT = Path(__file__).resolve().parent.parent


def test_the_spec_defaults():
    assert backup_settings.ENABLED is False
    assert backup_settings.SCHEDULE == "0 2 * * *"
    assert backup_settings.RETENTION_DAYS == 30
    assert backup_settings.FILENAME_PREFIX == "hoppybrew_backup"
    assert backup_settings.RESTORE_LOCK_TIMEOUT == 30


def test_values_are_read_when_used(settings):
    settings.BACKUP_RETENTION_DAYS = "7"
    assert backup_settings.RETENTION_DAYS == 7
    settings.BACKUP_ENABLED = "yes"
    assert backup_settings.ENABLED is True


@pytest.mark.parametrize(
    "variable, value, fragment",
    [
        ("BACKUP_RETENTION_DAYS", "thirty", "whole number"),
        ("BACKUP_RETENTION_DAYS", "-1", "at least 0"),
        ("BACKUP_RETENTION_MIN_COUNT", "0", "at least 1"),  # cleanup could delete the last backup
        ("BACKUP_RETENTION_DAYS", "2.5", "whole number"),
        ("BACKUP_SCHEDULE", "0 2 * *", "five fields"),
        ("BACKUP_SCHEDULE", "61 2 * * *", "minute 61 is out of range 0-59"),
        ("BACKUP_SCHEDULE", "0 25 * * *", "hour 25 is out of range 0-23"),
        ("BACKUP_SCHEDULE", "0 2 * * mon-frii", "unknown weekday 'frii'"),
        ("BACKUP_SCHEDULE", "0 2 * 0 *", "month 0 is out of range 1-12"),
        ("BACKUP_SCHEDULE", "*/0 2 * * *", "step in the minute field '*/0' must be at least 1"),
        ("BACKUP_CLEANUP_SCHEDULE", "every night", "five fields"),
        ("BACKUP_ENABLED", "maybe", "true or false"),
        ("BACKUP_FILENAME_PREFIX", "../evil", "prefix"),
        ("BACKUP_COMPRESSION", "rar", "gzip, zstd"),
    ],
)
def test_bad_values_are_errors_that_name_the_variable(settings, variable, value, fragment):
    setattr(settings, variable, value)
    errors = checks.check_settings(None)
    assert [error.id for error in errors] == ["backups.E001"]
    assert variable in errors[0].msg and fragment in errors[0].msg
    with pytest.raises(ImproperlyConfigured, match=variable):
        getattr(backup_settings, variable.removeprefix("BACKUP_"))


def test_a_backup_dir_that_cannot_be_created_is_an_error(settings, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings.BACKUP_DIR = str(blocker / "backups")
    errors = checks.check_storage(None)
    assert [error.id for error in errors] == ["backups.E003"]
    assert "BACKUP_DIR" in errors[0].msg


def test_the_backup_dir_is_created_private(settings, tmp_path):
    settings.BACKUP_DIR = str(tmp_path / "new" / "backups")
    assert checks.check_storage(None) == []
    assert (tmp_path / "new" / "backups").stat().st_mode & 0o777 == 0o700


def test_an_unknown_database_in_backup_databases_is_an_error(settings):
    settings.BACKUP_DATABASES = "default,warehouse"
    errors = checks.check_databases(None)
    assert [error.id for error in errors] == ["backups.E002"]
    assert "warehouse" in errors[0].msg


def test_missing_tools_are_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    warnings = checks.check_tools(None)
    assert warnings and warnings[0].id == "backups.W001" and "pg_dump" in warnings[0].msg


# manage.py backups runs only the checks its subcommand needs (not the site's), and still these.
@pytest.mark.parametrize("command", [["check"], ["backups", "schedule"]])
def test_manage_py_check_fails_naming_the_variable(tmp_path, command):
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SECRET_KEY": "test",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "BACKUP_DIR": str(tmp_path / "backups"),
        "BACKUP_SCHEDULE": "0 2 * *",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", *command], cwd=PROJECT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "BACKUP_SCHEDULE" in result.stderr and "five fields" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.django_db
def test_a_request_meeting_bad_configuration_gets_json_naming_the_variable(api, settings):
    settings.BACKUP_RETENTION_DAYS = "forever"
    response = api.post("/backups/cleanup")
    assert response.status_code == 503
    assert response.json()["status"] == "error"
    assert "BACKUP_RETENTION_DAYS" in response.json()["message"]


def test_environment_variables_reach_the_settings():
    assert from_environment({"BACKUP_DIR": "/x", "HOME": "/root", "BACKUP_UNKNOWN": "1"}) == {"BACKUP_DIR": "/x"}


def test_cronjobs_exist_only_when_enabled():
    assert cronjobs({}) == []
    assert cronjobs({"BACKUP_ENABLED": "true", "BACKUP_SCHEDULE": "0 */6 * * *"}) == [
        ("0 */6 * * *", "backups.cron.scheduled_backup"),
        ("30 3 * * *", "backups.cron.scheduled_cleanup"),
        ("45 4 * * *", "backups.cron.scheduled_verification"),
    ]
    assert (
        cronjobs({"BACKUP_ENABLED": "true", "BACKUP_VERIFY_SCHEDULE": "off"})[-1][1] == "backups.cron.scheduled_cleanup"
    )


def test_every_cron_expression_the_settings_accept_is_one_croniter_can_schedule():
    """The settings check cron expressions field by field, without croniter (whose import runs a
    subprocess): whatever they accept, croniter, which computes the runs, must accept too."""
    from croniter import croniter

    # Parts every field takes, parts only some take (names, high values), and parts none takes.
    common = ["*", "0", "1", "5", "1-5", "*/15", "2-6/2", "1,3"]
    some = ["jan", "Dec", "jan-mar", "mon", "SUN", "mon-fri", "sat,sun", "7", "12", "23", "31", "59"]
    wrong = ["60", "-1", "5-1", "*/0", "L", "?", "x", "", "frii", "1#2", "15W"]
    picks = random.Random(19)
    accepted = 0
    for _ in range(5000):
        fields = [picks.choice([common, common, common, some, wrong]) for _ in range(5)]
        expression = " ".join(picks.choice(parts) for parts in fields)
        try:
            text = parse_cron(expression)
        except ValueError:
            continue
        accepted += 1
        assert croniter.is_valid(text), expression
        croniter(text).get_next()
    assert accepted > 200  # the sample reached well beyond the refusals


def test_an_alias_that_cannot_be_in_a_filename_is_an_error(settings, extra_alias):
    settings.BACKUP_DATABASES = extra_alias("reports.2024")
    errors = checks.check_databases(None)
    assert [error.id for error in errors] == ["backups.E002"]
    assert "cannot be part of a backup's filename" in errors[0].msg
    assert checks.check_tools(None) == []  # the other checks carry on past it


def test_every_line_of_env_example_uncommented_is_a_valid_configuration(tmp_path):
    """What an operator gets by uncommenting .env.example's lines as they stand."""
    lines = (PROJECT / ".env.example").read_text().splitlines()
    settings_lines = [line[2:] for line in lines if re.match(r"^# [A-Z][A-Z0-9_]*=", line)]
    assert "BACKUP_SCHEDULE=0 2 * * *" in settings_lines
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(settings_lines) + "\n")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DJANGO_ENV_FILE": str(env_file),
        "BACKUP_DIR": str(tmp_path / "backups"),  # the example's ./data/backups is the checkout's
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=PROJECT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
