"""System checks: bad configuration fails loudly at start-up, naming the variable.

They run with ``manage.py check``, ``runserver``, ``migrate`` and ``crontab add``; the
container runs ``manage.py check`` before it starts serving. ``manage.py backups`` runs only
those its subcommand needs (``for_work``): a typo in the schedule must not stand in the way of
a restore on the day one is needed.
"""

import os
import stat

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from .conf import StorageLocation, backup_settings
from .encryption import IDENTITY_SETTING, load_identities
from .engines import ENGINES, get_engine
from .exceptions import BackupError, EncryptionKeyError, ToolMissing
from .naming import ALIAS_PATTERN
from .storage import get_storage

TAG = "backups"


@register(TAG)
def check_settings(app_configs, variables=None, **kwargs):
    """E001: a BACKUP_* value that cannot be parsed (of ``variables`` only, when given)."""
    return [
        Error(message, hint=f"Fix {variable} in the environment or .env.", id="backups.E001")
        for variable, message in backup_settings.errors(variables)
    ]


@register(TAG)
def check_databases(app_configs, **kwargs):
    """E002: BACKUP_DATABASES names an alias that does not exist or an unsupported engine."""
    try:
        aliases = backup_settings.DATABASES
    except ImproperlyConfigured:
        return []
    problems = []
    for alias in aliases:
        if alias not in connections.settings:
            problems.append(
                Error(
                    f"BACKUP_DATABASES: {alias!r} is not a configured database.",
                    hint=f"Configured databases: {', '.join(sorted(connections.settings))}.",
                    id="backups.E002",
                )
            )
        elif connections[alias].vendor not in ENGINES:
            problems.append(
                Error(
                    f"BACKUP_DATABASES: {alias!r} uses {connections[alias].vendor}, which cannot be backed up.",
                    hint=f"Supported: {', '.join(sorted(ENGINES))}.",
                    id="backups.E002",
                )
            )
        elif not ALIAS_PATTERN.fullmatch(alias):
            problems.append(
                Error(
                    f"BACKUP_DATABASES: the alias {alias!r} cannot be part of a backup's filename.",
                    hint="Name the database with letters, digits, '_' and '-' only.",
                    id="backups.E002",
                )
            )
    return problems


@register(TAG)
def check_storage(app_configs, **kwargs):
    """E003: the backup directory cannot be created or written. W002: others can read it."""
    try:
        location = backup_settings.STORAGE_URL
        if location is not None and location.scheme == "s3" and "backups" not in settings.STORAGES:
            return []  # no directory to check; building the storage would import boto3 for every command
        storage = get_storage()
    except ImproperlyConfigured:
        return []
    directory = storage.directory
    if directory is None:
        return []
    try:
        storage.ensure_directory()
    except Exception as exc:
        message = getattr(exc, "message", str(exc))
        return [Error(f"BACKUP_DIR: {message}", hint="Point BACKUP_DIR at a writable directory.", id="backups.E003")]
    if not os.access(directory, os.W_OK | os.X_OK):
        return [
            Error(
                f"BACKUP_DIR: {directory} is not writable by this user.",
                hint="Fix its ownership or point BACKUP_DIR elsewhere.",
                id="backups.E003",
            )
        ]
    return readable_by_others(directory, "BACKUP_DIR", "backups hold the whole database", "700", "backups.W002")


@register(TAG)
def check_tools(app_configs, **kwargs):
    """W001: a dump or restore tool the configured databases need is not on PATH."""
    try:
        aliases = [alias for alias in backup_settings.DATABASES if alias in connections.settings]
    except ImproperlyConfigured:
        return []
    problems = []
    for alias in dict.fromkeys(["default", *aliases]):
        try:
            get_engine(alias).check_tools()
        except ToolMissing as exc:
            problems.append(Warning(f"Backups of database {alias!r} will fail: {exc.message}", id="backups.W001"))
        except BackupError:
            continue  # an alias or engine that cannot be backed up: check_databases says so
    return problems


@register(TAG)
def check_offsite_storage(app_configs, **kwargs):
    """E004: the off-site storage is the primary storage itself, which would copy every backup
    onto itself and leave no second copy anywhere."""
    try:
        offsite = backup_settings.OFFSITE_STORAGE_URL
        primary = backup_settings.STORAGE_URL or StorageLocation("file", path=backup_settings.DIR)
    except ImproperlyConfigured:
        return []
    if offsite is None or offsite != primary:
        return []
    return [
        Error(
            f"BACKUP_OFFSITE_STORAGE_URL: {offsite} is the primary backup storage; a second copy must live elsewhere.",
            hint="Point it at another bucket, prefix or disk, or unset it.",
            id="backups.E004",
        )
    ]


@register(TAG)
def check_identity_file(app_configs, **kwargs):
    """W003: the identity file that decrypts backups cannot be used. W004: others can read it."""
    try:
        path = backup_settings.ENCRYPTION_IDENTITY_FILE
    except ImproperlyConfigured:
        return []
    if path is None:
        return []
    try:
        load_identities()
    except EncryptionKeyError as exc:
        message = exc.message.removesuffix(" Nothing was changed.")
        return [
            Warning(
                f"{message} Restores of encrypted backups will fail.",
                hint=f"Point {IDENTITY_SETTING} at a file made by age-keygen.",
                id="backups.W003",
            )
        ]
    return readable_by_others(path, IDENTITY_SETTING, "it decrypts every backup", "600", "backups.W004")


DRILL_HINT = (
    "Set BACKUP_VERIFY_DATABASE_URL to a server, or a role on this one, that may create databases "
    "(e.g. postgres://postgres@drill-host:5432/postgres), or grant the site's role CREATEDB."
)


@register(TAG)
def check_drills(app_configs, **kwargs):
    """W005: restore drills cannot make their scratch database (the site's role lacks CREATEDB
    and no BACKUP_VERIFY_DATABASE_URL names a server that allows it). Said once, here, rather
    than by a drill that fails every day."""
    from .services.health import drill_blocker

    try:
        aliases = [alias for alias in backup_settings.DATABASES if alias in connections.settings]
    except ImproperlyConfigured:
        return []  # check_settings names it
    problems = []
    for alias in aliases:
        reason = drill_blocker(alias)  # None too for a bad URL or a database out of reach: others say so
        if reason:
            message = f"Restore drills of database {alias!r} cannot run: {reason}."
            problems.append(Warning(message, hint=DRILL_HINT, id="backups.W005"))
    return problems


def readable_by_others(path, variable, why, private_mode, check_id):
    """A warning when a secret file or directory is open to other users, else none."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return []
    return [
        Warning(
            f"{variable}: {path} is readable by other users (mode {mode:o}); {why}.",
            hint=f"chmod {private_mode} {path}",
            id=check_id,
        )
    ]


def for_work(variables, *checks):
    """The problems that concern a piece of work: the settings it reads (names without the
    BACKUP_ prefix) and the other checks it needs, and nothing else."""
    problems = check_settings(None, variables=variables)
    for check in checks:
        problems.extend(check(None))
    return problems


@register(TAG)
def check_destinations(app_configs, **kwargs):
    """E005: BACKUP_DESTINATIONS names a STORAGES alias the site lacks, or two destinations that
    are one place (one copy would overwrite the other)."""
    try:
        specs = backup_settings.DESTINATIONS
    except ImproperlyConfigured:
        return []
    problems, seen = [], {}
    for spec in specs or ():
        if spec.storage_alias is not None and spec.storage_alias not in getattr(settings, "STORAGES", {}):
            problems.append(
                Error(
                    f"BACKUP_DESTINATIONS: destination {spec.name!r} names STORAGES[{spec.storage_alias!r}], "
                    "which is not defined.",
                    hint="Define it in the site's STORAGES or give the destination a url.",
                    id="backups.E005",
                )
            )
        place = spec.location or spec.storage_alias
        if place in seen:
            problems.append(
                Error(
                    f"BACKUP_DESTINATIONS: {spec.name!r} and {seen[place]!r} are the same place; "
                    "each copy must live elsewhere.",
                    hint="Point one of them at another bucket, prefix or disk, or remove it.",
                    id="backups.E005",
                )
            )
        seen.setdefault(place, spec.name)
    return problems
