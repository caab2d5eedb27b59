"""The errors the service raises. Entry points map ``status_code`` to HTTP and ``message`` to
what a person reads; messages never contain secrets or tracebacks."""

UNEXPECTED = "Unexpected error; see the server log."


def reason_of(exc):
    """What a person is told about ``exc``: the service's own message, the setting that is
    wrong, or where to look for the rest."""
    from django.core.exceptions import ImproperlyConfigured
    from django.db import DatabaseError

    if isinstance(exc, BackupError):
        return exc.message
    if isinstance(exc, ImproperlyConfigured):
        return f"Configuration error: {exc}"
    if isinstance(exc, DatabaseError):
        return catalog_error(exc).message
    return UNEXPECTED


class BackupError(Exception):
    """Base of every error the backup service reports to a caller."""

    status_code = 500
    default_message = "The backup operation failed."

    def __init__(self, message=None):
        self.message = message or self.default_message
        super().__init__(self.message)

    @property
    def details(self):
        """Fields for the API's error body and the journal, beside the message."""
        return {}


class InvalidRequest(BackupError):
    status_code = 400
    default_message = "The request is not valid."


class ForeignKeysWouldBreak(InvalidRequest):
    """A restore of chosen models refused before it changed anything: rows would point at rows
    that would not exist. ``findings`` lists them (``model_restore.Dangling``); ``related`` names
    the models that including the related ones would add first."""

    def __init__(self, message, *, findings, related):
        super().__init__(message)
        self.findings = findings
        self.related = related

    @property
    def details(self):
        """For the journal and the API: each finding as JSON (model, table, column, target, values)."""
        return {"findings": [finding.as_dict() for finding in self.findings]}


class NotAuthenticated(BackupError):
    status_code = 401
    default_message = "Authentication credentials were not provided."


class PermissionDenied(BackupError):
    status_code = 403
    default_message = "You do not have permission to do this."


class BackupNotFound(BackupError):
    status_code = 404
    default_message = "No such backup."


class OperationInProgress(BackupError):
    """Another backup or restore holds the database's lock."""

    status_code = 409
    default_message = "Another backup or restore of this database is running; try again when it has finished."


class BackupDamaged(BackupError):
    """The stored file does not match its manifest, or cannot be read back."""

    status_code = 422
    default_message = "The backup file is damaged; it was not restored."


class DumpFailed(BackupError):
    status_code = 500
    default_message = "The database dump failed."


class RestoreFailed(BackupError):
    status_code = 500
    default_message = "Database restore failed; the database was not changed."


class RestoreIncomplete(RestoreFailed):
    """A restore stopped partway through a database that cannot roll back (MySQL), leaving it
    partly restored.

    The engine raises it with the cause as its message; the service then restores the
    pre-restore backup and raises it again, saying both steps, with ``pre_restore_backup`` and
    ``undone`` (whether the database is back as it was before the restore).
    """

    def __init__(self, message, *, status_code=500, pre_restore_backup=None, undone=None):
        super().__init__(message)
        self.status_code = status_code
        self.pre_restore_backup = pre_restore_backup
        self.undone = undone

    @property
    def details(self):
        if self.pre_restore_backup is None:
            return {}
        return {"pre_restore_backup": self.pre_restore_backup, "undone": self.undone}


class DatabaseBusy(BackupError):
    status_code = 503
    default_message = "The database is busy: other sessions hold locks. Nothing was changed; try again."


class ToolMissing(BackupError):
    status_code = 503
    default_message = "A command-line tool the backup needs is not installed."


class DatabaseUnavailable(BackupError):
    status_code = 503
    default_message = "The database cannot be reached."


class StorageFailed(BackupError):
    status_code = 503
    default_message = "The backup storage failed."


class DiskFull(StorageFailed):
    status_code = 507
    default_message = "No space left on the backup storage; free space or run cleanup, then try again."


class WorkerUnavailable(BackupError):
    """The process that runs an asynchronous backup or restore could not be started."""

    status_code = 503
    default_message = "The background worker could not be started; nothing was done."


class ConfigurationError(BackupError):
    status_code = 503
    default_message = "The backup system is not configured correctly."


class EncryptionKeyError(BackupError):
    """The private key that decrypts a backup is not configured, cannot be read, or is not the
    right one. The database is never touched when this is raised."""

    status_code = 503
    default_message = "The key that decrypts this backup is not available; nothing was changed."


class CatalogUnavailable(DatabaseUnavailable):
    """The site's own database, which holds the backup catalog and the journal, cannot be used."""

    default_message = (
        "The site's database, which holds the backup catalog, cannot be reached; check DATABASE_URL and "
        "that its server is running."
    )


def catalog_error(exc):
    """The error a person reads for ``exc``, a Django ``DatabaseError`` from the catalog's database:
    unreachable (a stopped server, refused connections), or without the app's tables."""
    from django.db import ProgrammingError

    from .formatting import first_line

    said = first_line(exc)
    # A missing table is a ProgrammingError on PostgreSQL and MySQL, an OperationalError on SQLite.
    if isinstance(exc, ProgrammingError) or said.startswith("no such table"):
        return CatalogUnavailable(
            f"The backup catalog cannot be read from the site's database ({said}); "
            "run 'manage.py migrate' to create its tables, or check that DATABASE_URL names the site's database."
        )
    return CatalogUnavailable(
        f"The site's database, which holds the backup catalog, cannot be reached ({said}). "
        "Check DATABASE_URL and that the database server is running and accepts connections."
    )


class MigrateFailed(BackupError):
    """``migrate`` failed after a restore (or a pre-migrate backup): the restored data stays as
    it is, with the migrations applied so far, and the message says how to go on or undo."""

    status_code = 500

    def __init__(self, *, alias, failed_migration, applied, reason, restored_from=None, pre_restore_backup=None):
        self.failed_migration = failed_migration
        self.applied = applied
        self.pre_restore_backup = pre_restore_backup
        done = f" after applying {', '.join(applied)}" if applied else ""
        what = f"Database '{alias}' was restored from {restored_from}, but migrate" if restored_from else "migrate"
        undo = f" To undo the restore, restore {pre_restore_backup}." if pre_restore_backup and restored_from else ""
        if pre_restore_backup and not restored_from:
            undo = f" The backup taken before migrating is {pre_restore_backup}."
        super().__init__(
            f"{what} failed at {failed_migration or 'an unknown migration'}{done}: {reason}. The database keeps "
            f"what was restored and migrated so far; fix the migration and run 'manage.py migrate --database "
            f"{alias}'.{undo}"
        )

    @property
    def details(self):
        return {
            "failed_migration": self.failed_migration,
            "migrations_applied": self.applied,
            "pre_restore_backup": self.pre_restore_backup,
        }
