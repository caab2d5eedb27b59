"""Restoring a backup as a copy: into a new database created for it, never the live one, to look
at old data without touching production. Copies are recorded (``DatabaseCopy``), listed and dropped.

PostgreSQL and MariaDB: a database named NAME on the server of the backup's alias. SQLite: the
file NAME.sqlite3 next to the live database's file.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connections
from django.utils import timezone

from ..engines import get_engine
from ..exceptions import BackupNotFound, InvalidRequest
from ..models import Action, DatabaseCopy, Operation
from .backups import get_restorable_backup
from .journal import journal
from .restore import RESTORE_PERMISSIONS, check_restore, ignore_stage, load_dump, verified_copy_anywhere

COPY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
COPY_NAME_RULE = "A copy's name is a letter or '_' followed by letters, digits and '_' (at most 63)."


@dataclass
class CopyResult:
    copy: DatabaseCopy
    warnings: list = field(default_factory=list)
    operation: Operation | None = None


def copy_location(engine, into):
    """The new database's name (SQLite: its path) for the copy named ``into``; refuses names
    that are not plain identifiers and any database a configured alias uses."""
    if not isinstance(into, str) or not COPY_NAME.fullmatch(into):
        raise InvalidRequest(f"{COPY_NAME_RULE} Nothing was changed.")
    name = str(Path(engine.database_name).with_name(f"{into}.sqlite3")) if engine.vendor == "sqlite" else into
    for alias in connections:
        settings = connections.settings[alias]
        if str(settings.get("NAME")) == name and settings.get("HOST", "") == engine.settings_dict.get("HOST", ""):
            raise InvalidRequest(
                f"{into} is the database of the alias {alias!r}: a copy never replaces a configured database. "
                "Nothing was changed."
            )
    if DatabaseCopy.objects.filter(engine=engine.vendor, host=engine.database_host, name=name).exists():
        raise InvalidRequest(f"A copy named {into} exists already; drop it first or choose another name.")
    return name


def restore_copy(filename, *, actor, into, target=None, operation=None, progress=None, stage=None):
    """Restore ``filename`` into the new database ``into``, created for it on the server of its
    alias (or of ``target``, of the same engine); returns the copy. A restore that fails leaves no
    database behind. ``operation``, ``progress`` and ``stage`` as for ``restore_backup``."""
    stage = stage or ignore_stage
    with journal(
        Action.RESTORE_COPY,
        actor,
        filename=filename,
        permission=RESTORE_PERMISSIONS[Action.RESTORE_COPY],
        operation=operation,
    ) as record:
        backup = get_restorable_backup(filename)
        record.database = target or backup.database
        engine, manifest = check_restore(backup, record.database)
        name = copy_location(engine, into)
        record.details = {**record.details, "into": name}
        warnings = []
        stage("checking")
        with verified_copy_anywhere(filename, manifest, warnings) as source:
            stage("loading")
            copy_engine = engine.create_database(name)
            try:
                load_dump(copy_engine, source, filename, manifest.get("uncompressed_bytes"), progress=progress)
            except BaseException:
                engine.drop_database(name)
                raise
        copy = DatabaseCopy.objects.create(
            name=name,
            database=record.database,
            engine=engine.vendor,
            host=engine.database_host,
            filename=filename,
            created_at=timezone.now(),
            created_by=actor.name,
        )
        record.message = f"Restored {filename} into the new database {copy_engine.describe()}"
        record.details = {**record.details, "copy": str(copy.pk), "warnings": warnings}
    return CopyResult(copy=copy, warnings=warnings, operation=record)


def list_copies(*, actor):
    actor.require("view_backup")
    return DatabaseCopy.objects.all()


def get_copy(name_or_id):
    """A copy by its id, its name as given to ``--into``, or its database name (SQLite: path)."""
    copies = DatabaseCopy.objects.all()
    found = [copy for copy in copies if name_or_id in (str(copy.pk), copy.name, Path(copy.name).stem)]
    if len(found) != 1:
        reason = "No copy" if not found else "More than one copy"
        raise BackupNotFound(f"{reason} named {name_or_id}; 'manage.py backups copies' lists them.")
    return found[0]


def drop_copy(name_or_id, *, actor):
    """Drop a copy's database and forget it."""
    with journal(Action.DROP_COPY, actor, filename=str(name_or_id)[:255], permission="restore_copy") as record:
        copy = get_copy(str(name_or_id))
        record.database = copy.database
        record.filename = copy.filename
        engine_of(copy).drop_database(copy.name)
        record.message = f"Dropped the copy {copy.name}"
        record.details = {**record.details, "into": copy.name}
        copy.delete()
    return copy


def engine_of(copy):
    """The engine of the server that holds ``copy``: the one of the alias it was copied from."""
    engine = get_engine(copy.database)
    if engine.vendor != copy.engine or engine.database_host != copy.host:
        raise InvalidRequest(
            f"The copy {copy.name} is on another server than the alias {copy.database!r} now uses; drop it by hand."
        )
    return engine
