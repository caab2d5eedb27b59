"""Every BACKUP_* setting in one place: its default, how it is parsed, and what it means.

Values come from Django settings (the site's settings module copies the BACKUP_* environment
variables there as plain strings, see ``from_environment``). Each value is parsed when it is used,
not at import, so ``override_settings`` works in tests and a bad value fails with the variable's
name at the moment it matters. ``backups.checks`` parses all of them at start-up.
"""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

PREFIX = "BACKUP_"


def parse_bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def int_parser(minimum=0, optional=False):
    def parse(value):
        if optional and (value is None or str(value).strip() == ""):
            return None
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def parse_cron(value):
    """A standard five-field cron expression, as cron itself and django-crontab take it."""
    from croniter import croniter

    text = " ".join(str(value).split())
    if len(text.split(" ")) != 5 or not croniter.is_valid(text):
        raise ValueError(
            f"{value!r} is not a cron expression; expected five fields "
            "'minute hour day-of-month month day-of-week', e.g. '0 2 * * *'"
        )
    return text


def parse_optional_cron(value):
    if value is None or str(value).strip().lower() in {"", "off", "none", "false"}:
        return None
    return parse_cron(value)


def parse_list(value):
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value if str(item).strip()]
    return [item.strip() for item in str(value).split(",") if item.strip()]


def parse_optional_str(value):
    text = "" if value is None else str(value).strip()
    return text or None


PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(?:_[A-Za-z0-9-]+)*$")


def parse_prefix(value):
    text = str(value).strip()
    if not PREFIX_PATTERN.fullmatch(text) or len(text) > 64:
        raise ValueError(
            f"{value!r} is not a usable filename prefix; use letters, digits, '-' and '_' (at most 64 characters)"
        )
    return text


def parse_path(value):
    """A directory; relative paths are taken from the project root (BASE_DIR), not the cwd,
    so cron jobs, which start elsewhere, find the same directory."""
    path = Path(str(value)).expanduser()
    if not path.is_absolute():
        path = Path(getattr(django_settings, "BASE_DIR", os.getcwd())) / path
    return path


def choice_parser(*choices):
    def parse(value):
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


RATE_PATTERN = re.compile(r"^\d+/(s|sec|second|m|min|minute|h|hour|d|day)$")


def parse_rate(value):
    """A DRF throttle rate like '10/hour', or 'off'."""
    text = str(value).strip().lower()
    if text in {"", "off", "none", "false"}:
        return None
    if not RATE_PATTERN.fullmatch(text):
        raise ValueError(f"expected a rate like '10/hour' or 'off', got {value!r}")
    return text


@dataclass(frozen=True)
class Setting:
    default: Any
    parse: Callable[[Any], Any]
    help: str


SETTINGS = {
    "ENABLED": Setting(False, parse_bool, "Install the scheduled backup and cleanup jobs."),
    "DIR": Setting("data/backups", parse_path, "Directory of the local backup storage (relative to the project)."),
    "SCHEDULE": Setting("0 2 * * *", parse_cron, "Cron expression of the scheduled backup."),
    "CLEANUP_SCHEDULE": Setting("30 3 * * *", parse_cron, "Cron expression of the scheduled cleanup."),
    "RETENTION_DAYS": Setting(30, int_parser(0), "Cleanup deletes backups older than this many days."),
    "RETENTION_MIN_COUNT": Setting(
        3, int_parser(0), "The newest N successful backups of each database are always kept."
    ),
    "KEEP_DAILY": Setting(None, int_parser(0, optional=True), "Keep the newest backup of each of the last N days."),
    "KEEP_WEEKLY": Setting(None, int_parser(0, optional=True), "Keep the newest backup of each of the last N weeks."),
    "KEEP_MONTHLY": Setting(None, int_parser(0, optional=True), "Keep the newest backup of each of the last N months."),
    "FILENAME_PREFIX": Setting("hoppybrew_backup", parse_prefix, "First part of every backup filename."),
    "RESTORE_LOCK_TIMEOUT": Setting(
        30, int_parser(1), "Seconds a restore waits for other sessions' locks before giving up."
    ),
    "PRE_RESTORE_BACKUP": Setting(True, parse_bool, "Take a backup of the live database before each restore."),
    "DATABASES": Setting(["default"], parse_list, "Database aliases the scheduled jobs cover."),
    "COMPRESSION": Setting("gzip", choice_parser("gzip", "zstd"), "gzip (.sql.gz) or zstd (.sql.zst)."),
    "COMPRESSION_THREADS": Setting(
        0,
        int_parser(0),
        "Compression threads; 0 means half the CPU cores, at most 2; 1 compresses in the backup's own thread.",
    ),
    "THROTTLE_CREATE": Setting("30/hour", parse_rate, "API rate limit for creating backups per user, or off."),
    "THROTTLE_RESTORE": Setting("10/hour", parse_rate, "API rate limit for restores per user, or off."),
}


def from_environment(environ=os.environ):
    """The BACKUP_* variables that are set in ``environ``, for the site's settings module."""
    return {PREFIX + name: environ[PREFIX + name] for name in SETTINGS if PREFIX + name in environ}


class BackupSettings:
    """Attribute access to the parsed settings: ``backup_settings.RETENTION_DAYS``.

    ``source`` defaults to Django's settings; the site's settings module passes its own namespace
    to build CRONJOBS before Django's settings exist.
    """

    def __init__(self, source=None):
        self._source = source

    def _raw(self, variable, default):
        if self._source is None:
            return getattr(django_settings, variable, default)
        return self._source.get(variable, default)

    def __getattr__(self, name):
        try:
            spec = SETTINGS[name]
        except KeyError:
            raise AttributeError(f"unknown backup setting {name!r}") from None
        variable = PREFIX + name
        raw = self._raw(variable, spec.default)
        try:
            return spec.parse(raw)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"{variable}: {exc}") from None

    def errors(self):
        """(variable, message) for every setting whose value cannot be parsed."""
        problems = []
        for name in SETTINGS:
            try:
                getattr(self, name)
            except ImproperlyConfigured as exc:
                problems.append((PREFIX + name, str(exc)))
        return problems


backup_settings = BackupSettings()


def cronjobs(namespace):
    """CRONJOBS for django-crontab from the settings namespace being built.

    An invalid schedule produces no job here; ``manage.py check`` (which ``crontab add`` runs
    first) reports it by name instead of failing the import of the settings module.
    """
    values = BackupSettings(namespace)
    try:
        if not values.ENABLED:
            return []
    except ImproperlyConfigured:
        return []
    jobs = []
    for name, function in (
        ("SCHEDULE", "backups.cron.scheduled_backup"),
        ("CLEANUP_SCHEDULE", "backups.cron.scheduled_cleanup"),
    ):
        try:
            jobs.append((getattr(values, name), function))
        except ImproperlyConfigured:
            continue
    return jobs
