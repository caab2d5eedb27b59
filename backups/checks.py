"""System checks: bad configuration fails loudly at start-up, naming the variable.

They run with ``manage.py check``, ``runserver``, ``migrate`` and ``crontab add``; the
container runs ``manage.py check`` before it starts serving. ``manage.py backups`` runs only
these (tag ``backups``), not the whole site's.
"""

import os
import shutil
import stat

from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from .conf import backup_settings
from .engines import ENGINES, get_engine
from .storage import get_storage

TAG = "backups"


@register(TAG)
def check_settings(app_configs, **kwargs):
    """E001: a BACKUP_* value that cannot be parsed."""
    return [
        Error(message, hint=f"Fix {variable} in the environment or .env.", id="backups.E001")
        for variable, message in backup_settings.errors()
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
    return problems


@register(TAG)
def check_storage(app_configs, **kwargs):
    """E003: the backup directory cannot be created or written. W002: others can read it."""
    try:
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
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        return [
            Warning(
                f"BACKUP_DIR: {directory} is readable by other users (mode {mode:o}); backups hold the whole database.",
                hint=f"chmod 700 {directory}",
                id="backups.W002",
            )
        ]
    return []


@register(TAG)
def check_tools(app_configs, **kwargs):
    """W001: a dump or restore tool the configured databases need is not on PATH."""
    try:
        aliases = [alias for alias in backup_settings.DATABASES if alias in connections.settings]
    except ImproperlyConfigured:
        return []
    problems = []
    for alias in dict.fromkeys(["default", *aliases]):
        if connections[alias].vendor not in ENGINES:
            continue
        engine = get_engine(alias)
        missing = [tool for tool in engine.required_tools if shutil.which(tool) is None]
        if missing:
            problems.append(
                Warning(
                    f"{', '.join(missing)} not found on PATH: backups of database {alias!r} will fail.",
                    hint=f"Install the {engine.vendor} client tools on this machine.",
                    id="backups.W001",
                )
            )
    return problems
