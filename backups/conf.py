"""Every BACKUP_* setting in one place: its default, how it is parsed, and what it means.

Values come from Django settings (the site's settings module copies the BACKUP_* environment
variables there as plain strings, see ``from_environment``). Each value is parsed when it is used,
not at import, so ``override_settings`` works in tests and a bad value fails with the variable's
name at the moment it matters. ``backups.checks`` parses all of them at start-up.
"""

import importlib.util
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    """A standard five-field cron expression, as cron itself and django-crontab take it; a
    mistake is named field by field. (croniter, which computes the runs, accepts every expression
    this does; its import runs a subprocess, which the settings of every command would pay.)"""
    from .crontab_syntax import cron_problem

    text = " ".join(str(value).split())
    problem = cron_problem(text)
    if problem:
        raise ValueError(f"{value!r} is not a valid cron expression: {problem}")
    return text


def parse_optional_cron(value):
    if value is None or str(value).strip().lower() in {"", "off", "none", "false"}:
        return None
    return parse_cron(value)


def parse_list(value):
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value if str(item).strip()]
    return [item.strip() for item in str(value).split(",") if item.strip()]


def parse_url(value):
    text = parse_optional_str(value)
    if text is not None and not re.match(r"^https?://[^\s/]+", text):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return text


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


def parse_optional_path(value):
    if value is None or str(value).strip() == "":
        return None
    return parse_path(str(value).strip())


def parse_identity_file(value):
    path = parse_optional_path(value)
    if path is not None:
        require_extra("age", "pyrage")
    return path


@dataclass(frozen=True)
class StorageLocation:
    """Where a storage URL points: ``s3://bucket/prefix`` or ``file:///absolute/path``."""

    scheme: str
    bucket: str = ""
    prefix: str = ""
    path: Path | None = None

    def __str__(self):
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"file://{self.path}"


# S3 bucket naming rules: 3-63 lower-case letters, digits, dots and hyphens.
BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
PREFIX_SEGMENT_PATTERN = re.compile(r"^[A-Za-z0-9._=+@,-]+$")


def parse_storage_url(value):
    """``s3://bucket/prefix`` (django-storages' S3 backend) or ``file:///path`` (a local
    directory), or nothing. Credentials never belong in the URL, and an error never repeats one."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise ValueError(
            "the URL must not contain credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
        )
    if parts.query or parts.fragment:
        raise ValueError("the URL takes no query or fragment; expected s3://bucket/prefix or file:///path")
    if parts.scheme == "s3":
        if not BUCKET_PATTERN.fullmatch(parts.netloc):
            raise ValueError(
                f"{parts.netloc!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.' and '-'); "
                "expected s3://bucket/prefix"
            )
        segments = [segment for segment in parts.path.split("/") if segment]
        if any(segment in {".", ".."} or not PREFIX_SEGMENT_PATTERN.fullmatch(segment) for segment in segments):
            raise ValueError(f"{parts.path!r} is not a usable key prefix; use letters, digits and '/._=+@,-'")
        require_extra("s3", "storages", "boto3")
        return StorageLocation("s3", bucket=parts.netloc, prefix="/".join(segments))
    if parts.scheme == "file":
        if parts.netloc not in {"", "localhost"} or not parts.path.startswith("/"):
            raise ValueError("a file URL needs an absolute path: file:///srv/backups")
        return StorageLocation("file", path=Path(parts.path))
    scheme = parts.scheme or "(none)"
    raise ValueError(f"unsupported scheme {scheme!r}; expected s3://bucket/prefix or file:///path")


def require_extra(extra, *modules):
    """S3 and encryption need packages the app installs only with an extra; say which, by name,
    without importing them (boto3 alone takes a quarter of a second)."""
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ValueError(
            f"needs the Python packages {', '.join(missing)}, which are not installed: "
            f"pip install 'hoppybrew-backups[{extra}]'"
        )


DESTINATION_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
RETENTION_OPTIONS = {
    "retention_days": int_parser(0),
    "min_count": int_parser(1),
    "keep_daily": int_parser(0, optional=True),
    "keep_weekly": int_parser(0, optional=True),
    "keep_monthly": int_parser(0, optional=True),
}
DESTINATION_OPTIONS = {"url", "storage", "verify", "offsite", *RETENTION_OPTIONS}


@dataclass(frozen=True)
class DestinationSpec:
    """One entry of BACKUP_DESTINATIONS: where (a storage URL or a STORAGES alias), whether each
    copy is read back and checked, whether it is off-site, and its own retention, if any."""

    name: str
    location: StorageLocation | None = None
    storage_alias: str | None = None
    verify: bool = True
    offsite: bool = False
    retention: tuple = ()  # (option, value) pairs that replace the BACKUP_RETENTION_* defaults


def parse_destinations(value):
    """A JSON object (or a dict, in settings.py) of destinations in the order restores try them:
    ``{"local": {"url": "file:///srv/backups"}, "s3": {"url": "s3://bucket/hb", "offsite": true,
    "retention_days": 90}, "archive": {"storage": "archive"}}``. Unset: BACKUP_STORAGE_URL (or
    BACKUP_DIR) and BACKUP_OFFSITE_STORAGE_URL."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise ValueError('expected a JSON object such as {"local": {"url": "file:///srv/backups"}}')
    specs = []
    for name, options in value.items():
        if not isinstance(name, str) or not DESTINATION_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{name!r} is not a destination name; use lower-case letters, digits, '_' and '-'")
        if not isinstance(options, dict):
            raise ValueError(f"destination {name!r}: expected an object of options")
        unknown = sorted(set(options) - DESTINATION_OPTIONS)
        if unknown:
            raise ValueError(
                f"destination {name!r}: unknown option {unknown[0]!r}; known: {', '.join(sorted(DESTINATION_OPTIONS))}"
            )
        if ("url" in options) == ("storage" in options):
            raise ValueError(f"destination {name!r}: give either 'url' (s3://... or file:///...) or 'storage'")
        try:
            location = parse_storage_url(options["url"]) if "url" in options else None
            retention = tuple(
                (option, parse(options[option])) for option, parse in RETENTION_OPTIONS.items() if option in options
            )
            specs.append(
                DestinationSpec(
                    name=name,
                    location=location,
                    storage_alias=str(options["storage"]) if "storage" in options else None,
                    verify=parse_bool(options.get("verify", True)),
                    offsite=parse_bool(options.get("offsite", False)),
                    retention=retention,
                )
            )
        except ValueError as exc:
            raise ValueError(f"destination {name!r}: {exc}") from None
    if not specs:
        raise ValueError("name at least one destination, or leave BACKUP_DESTINATIONS unset")
    return tuple(specs)


def parse_recipients(value):
    """age X25519 public keys (``age1...``), separated by commas or white space."""
    items = value if isinstance(value, (list, tuple)) else re.split(r"[\s,]+", str(value or ""))
    items = [str(item).strip() for item in items if str(item).strip()]
    if not items:
        return []
    require_extra("age", "pyrage")
    from pyrage import RecipientError, x25519

    recipients = []
    for item in items:
        if item.upper().startswith("AGE-SECRET-KEY-"):
            # Not repeated in the message: it is a secret, and it should not be on this server.
            raise ValueError(
                "a private key (AGE-SECRET-KEY-...) was given; list only public keys (age1...) here "
                "and keep the private key off the machine that makes backups"
            )
        try:
            x25519.Recipient.from_str(item)
        except RecipientError:
            shown = item if len(item) <= 70 else item[:67] + "..."
            raise ValueError(f"{shown!r} is not an age X25519 public key (age1...)") from None
        recipients.append(item)
    return list(dict.fromkeys(recipients))


def parse_apprise_urls(value):
    """Apprise URLs (``slack://...``, ``mailtos://...``, ``ntfy://...``), separated by commas or
    white space as Apprise itself takes them. An error names the entry, never the URL: it holds
    the service's token or password."""
    items = value if isinstance(value, (list, tuple)) else [value]
    text = " ".join(str(item) for item in items if item is not None).strip()
    if not text:
        return []
    from apprise import Apprise
    from apprise.utils.parse import parse_urls

    urls = parse_urls(text)
    for position, url in enumerate(urls, 1):
        if Apprise.instantiate(url) is None:
            scheme = url.partition("://")[0] if "://" in url else "(none)"
            raise ValueError(
                f"entry {position} (scheme {scheme!r}) is not a URL Apprise can send to; "
                "see https://github.com/caronc/apprise/wiki for each service's URL"
            )
    return urls


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


DRILL_VENDORS = {"django.db.backends.postgresql": "postgresql", "django.db.backends.mysql": "mysql"}


def parse_database_url(value):
    """A database server URL, as DATABASE_URL takes it (postgres:// or mysql://), as Django's
    HOST, PORT, USER, PASSWORD and NAME plus ``vendor``; or nothing. Errors never repeat the URL,
    which may hold a password."""
    text = parse_optional_str(value)
    if text is None:
        return None
    import environ

    scheme = text.split("://", 1)[0] if "://" in text else "(none)"
    try:
        config = environ.Env.db_url_config(text)
    except Exception:
        config = {}
    vendor = DRILL_VENDORS.get(config.get("ENGINE"))
    if vendor is None or not config.get("HOST"):
        raise ValueError(
            f"expected postgres://user:password@host:5432/postgres or mysql://user:password@host:3306/ "
            f"(the scheme given is {scheme!r})"
        )
    return {"vendor": vendor, **{key: config[key] for key in ("HOST", "PORT", "USER", "PASSWORD", "NAME")}}


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
        3, int_parser(1), "The newest N successful backups of each database are always kept (at least 1)."
    ),
    "KEEP_DAILY": Setting(None, int_parser(0, optional=True), "Keep the newest backup of each of the last N days."),
    "KEEP_WEEKLY": Setting(None, int_parser(0, optional=True), "Keep the newest backup of each of the last N weeks."),
    "KEEP_MONTHLY": Setting(None, int_parser(0, optional=True), "Keep the newest backup of each of the last N months."),
    "FILENAME_PREFIX": Setting("hoppybrew_backup", parse_prefix, "First part of every backup filename."),
    "RESTORE_LOCK_TIMEOUT": Setting(
        30, int_parser(1), "Seconds a restore waits for other sessions' locks before giving up."
    ),
    "PRE_RESTORE_BACKUP": Setting(True, parse_bool, "Take a backup of the live database before each restore."),
    "MIGRATE_AFTER_RESTORE": Setting(
        True, parse_bool, "Run migrate after restoring a backup that is behind the code's migrations."
    ),
    "APP_VERSION": Setting(None, parse_optional_str, "The project's version for manifests; unset: the git commit."),
    "DATABASES": Setting(["default"], parse_list, "Database aliases the scheduled jobs cover."),
    "COMPRESSION": Setting("gzip", choice_parser("gzip", "zstd"), "gzip (.sql.gz) or zstd (.sql.zst)."),
    "COMPRESSION_THREADS": Setting(
        0,
        int_parser(0),
        "Compression threads; 0 means half the CPU cores, at most 2; 1 compresses in the backup's own thread.",
    ),
    "THROTTLE_CREATE": Setting("30/hour", parse_rate, "API rate limit for creating backups per user, or off."),
    "THROTTLE_RESTORE": Setting("10/hour", parse_rate, "API rate limit for restores per user, or off."),
    "VERIFY_SCHEDULE": Setting(
        "45 4 * * *", parse_optional_cron, "Cron expression of the restore drill of the newest backup, or off."
    ),
    "NOTIFY_EMAILS": Setting([], parse_list, "Addresses that receive notifications, comma separated."),
    "NOTIFY_WEBHOOK_URL": Setting(None, parse_url, "URL that receives notifications as a JSON POST with 'text'."),
    "NOTIFY_ON_SUCCESS": Setting(
        False,
        parse_bool,
        "Notify every outcome of the scheduled jobs, not only failures: each backup, cleanup and drill that succeeds.",
    ),
    "NOTIFY_ON_RESTORE": Setting(True, parse_bool, "Notify every restore of a live database."),
    "MAX_AGE_HOURS": Setting(
        None,
        int_parser(1, optional=True),
        "Health fails when a database's newest backup is older (default 26 when scheduling is enabled).",
    ),
    "HEALTH_TOKEN": Setting(None, parse_optional_str, "Bearer token that lets a monitor read /backups/health."),
    "HEALTH_PUBLIC": Setting(False, parse_bool, "Let anyone read /backups/health (without filenames)."),
    "STORAGE_URL": Setting(
        None, parse_storage_url, "s3://bucket/prefix or file:///path for backups; unset: BACKUP_DIR."
    ),
    "OFFSITE_STORAGE_URL": Setting(
        None, parse_storage_url, "A second storage (s3://... or file:///...) every backup is copied to."
    ),
    "DESTINATIONS": Setting(
        None,
        parse_destinations,
        "JSON object of the storages every backup is written to, in restore order; unset: STORAGE_URL and OFFSITE.",
    ),
    "MIN_COPIES": Setting(1, int_parser(1), "Health fails when a database's newest backup has fewer copies."),
    "REQUIRE_OFFSITE": Setting(
        False, parse_bool, "Health fails when a database's newest backup has no copy in an off-site destination."
    ),
    "ENCRYPTION_RECIPIENTS": Setting(
        [], parse_recipients, "age public keys (age1...); when set, backups are encrypted to them."
    ),
    "ENCRYPTION_IDENTITY_FILE": Setting(
        None, parse_identity_file, "age identity file (private key) that decrypts backups for restores."
    ),
    "RESTORE_METHOD": Setting(
        "in-place",
        choice_parser("in-place", "switch", "auto"),
        "in-place; switch: load beside the live database, then swap names (PostgreSQL, needs CREATEDB); "
        "auto: switch where the database role may.",
    ),
    "RESTORE_KEEP_OLD_HOURS": Setting(
        24, int_parser(0), "Hours a database replaced by a switch restore is kept as the undo before cleanup drops it."
    ),
    "JOBS": Setting(1, int_parser(1), "Workers that dump a PostgreSQL database's tables side by side."),
    "RESTORE_JOBS": Setting(
        2, int_parser(1), "Sessions that load a PostgreSQL restore beside the live database side by side (switch)."
    ),
    "JOB_LOG": Setting(
        "data/logs/backup-jobs.log", parse_path, "Where the worker processes of asynchronous API requests log."
    ),
    "VERIFY_DATABASE_URL": Setting(
        None,
        parse_database_url,
        "Server (and a role that may create databases) where restore drills make their scratch databases.",
    ),
    "METRICS_PUBLIC": Setting(False, parse_bool, "Let anyone read /backups/metrics (no label names a file)."),
    "NOTIFY_URLS": Setting(
        [], parse_apprise_urls, "Apprise URLs that receive notifications (Slack, Teams, ntfy, mailto, json ...)."
    ),
    "PING_URL": Setting(
        None, parse_url, "Dead-man ping URL of the scheduled backup: BASE/start, BASE on success, BASE/fail."
    ),
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

    def errors(self, names=None):
        """(variable, message) for every setting (of ``names``, when given) whose value cannot
        be parsed."""
        problems = []
        for name in SETTINGS if names is None else names:
            try:
                getattr(self, name)
            except ImproperlyConfigured as exc:
                problems.append((PREFIX + name, str(exc)))
        return problems


backup_settings = BackupSettings()


def max_age_hours():
    """BACKUP_MAX_AGE_HOURS, defaulting to 26 (a daily schedule plus slack) when scheduling is on."""
    configured = backup_settings.MAX_AGE_HOURS
    if configured is None and backup_settings.ENABLED:
        return 26
    return configured


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
        ("VERIFY_SCHEDULE", "backups.cron.scheduled_verification"),
    ):
        try:
            expression = getattr(values, name)
        except ImproperlyConfigured:
            continue
        if expression:
            jobs.append((expression, function))
    return jobs
