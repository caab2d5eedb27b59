"""``manage.py backups migrate``: a backup of the database before ``migrate`` changes it, so that a
migration that goes wrong on deployment can be undone by restoring it."""

from dataclasses import dataclass

from django.core.management import call_command
from django.db import connections
from django.db.migrations.recorder import MigrationRecorder

from ..exceptions import BackupError
from ..models import Trigger
from .backups import create_backup
from .migrations import migrate_database, pending_migrations


@dataclass
class MigrateResult:
    database: str
    applied: list
    backup: object = None  # the pre-migrate backup, when one was taken
    skipped_backup: str = ""  # why none was


def migrate_with_backup(*, actor, database="default"):
    """``migrate``, with a backup first (trigger pre-migrate) when there is anything to migrate.

    A database without ``django_migrations`` is new: there is nothing to protect. The backups
    app's own migrations go first, so that the backup can be recorded in the catalog.
    """
    planned = pending_migrations(database)
    result = MigrateResult(database=database, applied=[])
    if not planned:
        return result
    if not MigrationRecorder(connections[database]).has_table():
        result.skipped_backup = "the database is new (no django_migrations table): nothing to back up"
    else:
        if any(name.startswith("backups.") for name in planned):
            call_command("migrate", "backups", database=database, interactive=False, verbosity=0)
        try:
            result.backup = create_backup(
                actor=actor,
                database=database,
                trigger=Trigger.PRE_MIGRATE,
                description=f"Before migrating: {', '.join(planned)}"[:500],
            )
        except BackupError as exc:
            raise type(exc)(f"The backup before migrating failed, so nothing was migrated: {exc.message}") from None
    result.applied = migrate_database(database, undo=result.backup.filename if result.backup else None)
    return result
