"""Making, finding, describing and deleting backups."""

import logging
import time
from contextlib import suppress

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from ..compression import CountingWriter, codec_for, configured_codec
from ..conf import backup_settings
from ..encryption import manifest_entry
from ..engines import get_engine
from ..exceptions import BackupError, BackupNotFound, InvalidRequest, OperationInProgress, reason_of
from ..models import Action, Backup, BackupStatus, Trigger
from ..naming import candidate_names, manifest_name, validate_filename
from ..storage import FanOutWriter, backup_storages, destinations, get_storage
from .catalog import INTERRUPTED, worker_gone
from .copies import open_stored, settle_copies, write_manifest
from .journal import journal, printable, this_worker
from .migrations import migration_state

logger = logging.getLogger("backups")

MANIFEST_FORMAT = 1
DESCRIPTION_MAX_LENGTH = 500
PROGRESS_INTERVAL = 1.0
# The spec's list fields, which every manifest holds too.
LIST_FIELDS = ("filename", "timestamp", "created_at", "description", "size_bytes", "database_name", "database_host")


def clean_description(description):
    if description is None:
        return ""
    if not isinstance(description, str):
        raise InvalidRequest("The description must be a string.")
    if len(description) > DESCRIPTION_MAX_LENGTH:
        raise InvalidRequest(f"The description is too long: at most {DESCRIPTION_MAX_LENGTH} characters.")
    # Control characters (other than tab and newline) have no place in a note and can corrupt
    # terminals and logs; markup is kept as typed and escaped wherever it is shown.
    return "".join(ch for ch in description if ch in "\t\n" or ch.isprintable()).strip()


def create_backup(
    *, actor, description="", database="default", trigger=Trigger.MANUAL, progress=None, backup=None, operation=None
):
    """Dump ``database`` into a new compressed backup; returns its catalog row.

    Backups of one database may run side by side; none runs while that database is restored.
    Every attempt that starts leaves a row: succeeded, or failed with the reason (a missing tool,
    an unreachable database, a dump that died). A refusal before the start (no permission, bad
    input, a restore in progress) leaves none. ``backup`` and ``operation`` continue rows
    reserved earlier (an asynchronous backup, whose row someone is already polling).
    """
    with journal(Action.CREATE, actor, database=database, permission="add_backup", operation=operation) as record:
        description = clean_description(description)
        engine = get_engine(database)
        reserved_here = backup is None
        if reserved_here:
            backup = reserve_backup(engine, actor=actor, description=description, trigger=trigger)
        record.filename = backup.filename
        try:
            with engine.lock(exclusive=False):
                write_backup(engine, backup, progress=progress)
        except OperationInProgress as exc:
            if reserved_here:
                backup.delete()  # it never started
            else:
                mark_failed(backup, exc.message)
            raise
        except BackupError as exc:
            if backup.status != BackupStatus.FAILED:  # the lock itself failed: no database
                mark_failed(backup, exc.message)
            raise
    return backup


def write_backup(engine, backup, progress=None):
    """Dump, compress and store into the reserved ``backup``, in every destination at once; the
    caller holds the lock.

    A failure leaves no file behind and marks the catalog row failed with the reason. A
    destination that fails while others succeed is recorded on the row (``offsite_error``).
    """
    written = None
    backup.status = BackupStatus.RUNNING
    backup.worker = this_worker()
    backup.save(update_fields=["status", "worker"])
    started = time.monotonic()
    try:
        engine.check_tools()
        versions = engine.versions()
        schema = migration_state(engine)
        written = stream_dump(engine, backup, progress)
        backup.finished_at = timezone.now()
        backup.size_bytes = written["size_bytes"]
        backup.uncompressed_bytes = written["uncompressed_bytes"]
        backup.sha256 = written["sha256"]
        backup.status = BackupStatus.SUCCEEDED
        backup.bytes_written = written["size_bytes"]
        backup.locations = written["destinations"]
        backup.manifest = build_manifest(
            backup,
            versions=versions,
            duration=time.monotonic() - started,
            table_rows=written["table_rows"],
            restore_requirements=written["restore_requirements"],
            schema=schema,
        )
        settle_copies(backup, written["destinations"], written["failures"])
    except BaseException as exc:
        if written is not None:  # files were stored, their manifests were not: nobody would list them
            for name, storage in backup_storages():
                if name in written["destinations"]:
                    with suppress(Exception):
                        storage.delete(backup.filename)
        mark_failed(backup, reason_of(exc))
        raise
    backup.save()
    logger.info(
        "Backup %s written: %s bytes in %.1f s to %s",
        backup.filename,
        backup.size_bytes,
        backup.manifest["duration_seconds"],
        ", ".join(backup.locations),
    )
    return backup


def record_failed_attempt(engine, *, actor, trigger, reason):
    """A failed row for an attempt that could not even start (a scheduled run that found the
    database down or being restored), so that the catalog shows it."""
    backup = reserve_backup(engine, actor=actor, description="", trigger=trigger)
    mark_failed(backup, reason)
    return backup


def reserve_backup(engine, *, actor, description, trigger):
    """A catalog row with a name nobody else has: the unique filename is the reservation, so two
    backups in the same second (or on two hosts) get distinct names."""
    created_at = timezone.now()
    codec = configured_codec()
    storage = get_storage()
    database = router.db_for_write(Backup)
    for filename in candidate_names(backup_settings.FILENAME_PREFIX, engine.alias, created_at, codec.suffix):
        if Backup.objects.filter(filename=filename).exists() or storage.exists(manifest_name(filename)):
            continue
        try:
            with transaction.atomic(using=database):
                return Backup.objects.create(
                    filename=filename,
                    database=engine.alias,
                    engine=engine.vendor,
                    database_name=engine.database_name,
                    database_host=engine.database_host,
                    description=description,
                    trigger=trigger,
                    origin=actor.origin,
                    created_by=actor.name,
                    status=BackupStatus.PENDING,
                    created_at=created_at,
                )
        except IntegrityError:
            continue
    raise OperationInProgress("Too many backups in the same second; try again.")


def stream_dump(engine, backup, progress=None):
    """pg_dump (or the engine's dump) -> compressor -> checksum -> every destination, in chunks.

    Nothing uncompressed touches the disk and memory holds a few chunks at a time.
    """
    codec = codec_for(backup.filename)
    reporter = ProgressReporter(backup, progress)
    uncompressed = 0
    with FanOutWriter(destinations(), backup.filename) as fan_out:
        counted = CountingWriter(fan_out)
        compressor = codec.compressor(counted)
        try:
            with engine.dump() as dump:
                for chunk in dump:
                    compressor.write(chunk)
                    uncompressed += len(chunk)
                    reporter.tick(uncompressed, counted.size)
                table_rows = dump.row_counts
                requirements = dump.restore_requirements
            compressor.close()
        except BaseException:
            with suppress(Exception):  # the error that got us here is the one to report
                compressor.close()
            raise
    reporter.tick(uncompressed, counted.size, final=True)
    return {
        "size_bytes": counted.size,
        "sha256": counted.sha256,
        "uncompressed_bytes": uncompressed,
        "table_rows": table_rows,
        "restore_requirements": requirements,
        "destinations": fan_out.written,
        "failures": fan_out.failures,
    }


class ProgressReporter:
    """Publishes progress about once a second: to the catalog row, for anyone polling it, and to
    an optional callback (the command's progress bar). Progress is best effort: a busy catalog
    database never stops a backup."""

    def __init__(self, backup, callback=None):
        self.backup = backup
        self.callback = callback
        self.started = time.monotonic()
        self.last = self.started

    def tick(self, uncompressed, written, final=False):
        now = time.monotonic()
        if not final and now - self.last < PROGRESS_INTERVAL:
            return
        self.last = now
        if self.callback is not None:
            self.callback(uncompressed=uncompressed, written=written, elapsed=now - self.started, final=final)
        if final:
            return
        try:
            Backup.objects.filter(pk=self.backup.pk).update(bytes_written=written, progress_at=timezone.now())
        except Exception:
            logger.debug("Could not record progress of %s", self.backup.filename, exc_info=True)


def build_manifest(backup, *, versions, duration, table_rows, schema, restore_requirements=None):
    manifest = {field: _json_value(getattr(backup, field)) for field in LIST_FIELDS}
    manifest.update(
        {
            "format_version": MANIFEST_FORMAT,
            "status": BackupStatus.SUCCEEDED,
            "database": backup.database,
            "engine": backup.engine,
            "server_version": versions["server"],
            "dump_tool_version": versions["dump_tool"],
            "compression": codec_for(backup.filename).name,
            "sha256": backup.sha256,
            "uncompressed_bytes": backup.uncompressed_bytes,
            "duration_seconds": round(duration, 3),
            "finished_at": backup.finished_at.isoformat(),
            "trigger": backup.trigger,
            "origin": backup.origin,
            "created_by": backup.created_by,
            "table_rows": table_rows,
            "restore_requirements": restore_requirements,
            "encryption": manifest_entry(backup.filename),
            "locations": backup.locations,
            # Applied migrations per app, Django's and the project's versions (services.migrations).
            **schema,
        }
    )
    return manifest


def _json_value(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


def mark_failed(backup, reason):
    """Record the failure without letting a second error (the catalog out of reach) hide the first."""
    try:
        backup.mark_failed(reason)
    except Exception:
        logger.exception("Could not record the failure of %s", backup.filename)


def get_backup(filename, *, actor=None):
    """The catalog row of a backup, whatever its status; one whose writer died is failed."""
    if actor is not None:
        actor.require("view_backup")
    validate_filename(filename)
    try:
        backup = Backup.objects.get(filename=filename)
    except Backup.DoesNotExist:
        raise BackupNotFound(f"No backup named {filename}.") from None
    if backup.status in (BackupStatus.PENDING, BackupStatus.RUNNING) and worker_gone(backup.worker):
        mark_failed(backup, INTERRUPTED)
    return backup


def get_restorable_backup(filename):
    backup = get_backup(filename)
    if backup.status != BackupStatus.SUCCEEDED:
        raise BackupNotFound(f"{filename} cannot be restored: its status is {backup.status}.")
    return backup


def list_backups(*, actor, database=None):
    """Backups that can be restored, newest first."""
    actor.require("view_backup")
    queryset = Backup.objects.restorable().defer("manifest")
    if database:
        if database not in connections.settings:
            known = ", ".join(sorted(connections.settings))
            raise InvalidRequest(f"Unknown database {printable(database, 64)!r}; configured databases: {known}.")
        queryset = queryset.for_database(database)
    return queryset


def open_backup(filename, *, actor):
    """The stored file of a restorable backup, for downloading: (backup, readable stream)."""
    actor.require("download_backup")
    backup = get_restorable_backup(filename)
    return backup, open_stored(filename)


def describe_database(alias="default"):
    """What a restore of ``alias`` would overwrite: engine, name, host and current size."""
    engine = get_engine(alias)
    return {
        "alias": alias,
        "engine": engine.vendor,
        "name": engine.database_name,
        "host": engine.database_host,
        "size_bytes": engine.size_bytes(),
    }


def newest_backups(*, actor):
    """The newest restorable backup of each database that has one."""
    actor.require("view_backup")
    databases = Backup.objects.restorable().values_list("database", flat=True).distinct().order_by("database")
    return [Backup.objects.for_database(alias).newest() for alias in databases]


def update_description(filename, description, *, actor):
    """Change a backup's description in the catalog and its manifest."""
    actor.require("change_backup")
    description = clean_description(description)
    backup = get_backup(filename)
    backup.description = description
    if backup.status == BackupStatus.SUCCEEDED and backup.manifest:
        backup.manifest["description"] = description
        write_manifest(backup)
    backup.save(update_fields=["description", "manifest"])
    return backup


def delete_backup(filename, *, actor):
    """Delete the file, its manifest and the catalog row."""
    with journal(Action.DELETE, actor, filename=filename, permission="delete_backup") as operation:
        backup = get_backup(filename)
        operation.database = backup.database
        if backup.status in (BackupStatus.PENDING, BackupStatus.RUNNING):
            raise OperationInProgress(f"{filename} is still being written; delete it when it has finished.")
        operation.details = {"size_bytes": backup.size_bytes}
        remove_backup_files(backup)
    return backup


def remove_backup_files(backup):
    """From every storage (the off-site copy too). The data file goes first: a manifest without
    its file is reported missing by sync, while a file without its manifest would be an orphan
    nobody lists."""
    for _label, storage in backup_storages():
        storage.delete(backup.filename)
        storage.delete(manifest_name(backup.filename))
    backup.delete()
