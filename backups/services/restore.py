"""Restoring a database from a backup: checked, locked, undoable, and all or nothing (or, where
the database cannot roll back, undone by the pre-restore backup when it fails)."""

import logging
import os
import shutil
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from django.db import DatabaseError, connections, router, transaction
from django.utils import timezone

from ..compression import CHUNK_SIZE, CountingReader, codec_for, file_sha256
from ..conf import backup_settings
from ..engines import get_engine
from ..exceptions import (
    BackupDamaged,
    BackupError,
    BackupNotFound,
    DatabaseBusy,
    InvalidRequest,
    MigrateFailed,
    RestoreFailed,
    RestoreIncomplete,
    StorageFailed,
)
from ..models import Action, Backup, DatabaseCopy, HealthState, Operation, Trigger
from ..storage import backup_storages, is_storage_failure, storage_error
from ..streams import RawReader
from .backups import (
    PROGRESS_INTERVAL,
    describe_database,
    get_backup,
    get_restorable_backup,
    reserve_backup,
    write_backup,
)
from .catalog import sync_catalog
from .copies import usable_manifest
from .journal import journal
from .migrations import MigrationDiff, ahead_refusal, migrate_database, migration_diff, refuse_ahead, wants_migrate
from .notify import notify
from .retention import drop_interrupted_loads

logger = logging.getLogger("backups")

# Rows that must outlive a restore of the database that holds them: the catalog (rebuilt from
# storage afterwards anyway), the audit trail, which records the very restore, and the health
# state, so that a restore does not announce a change of health that did not happen.
CARRIED_MODELS = (Backup, Operation, HealthState, DatabaseCopy)


@dataclass
class RestoreResult:
    backup: Backup
    database: str
    finished_at: object
    pre_restore_backup: Backup | None = None
    warnings: list = field(default_factory=list)
    operation: Operation | None = None
    migrations_applied: list = field(default_factory=list)  # by the migrate that followed the restore
    method: str = "in-place"  # or "switch": loaded beside the live database, then swapped names
    undo_database: str | None = None  # after a switch: the replaced database, kept as the undo


def restore_backup(
    filename,
    *,
    actor,
    target=None,
    pre_restore_backup=None,
    operation=None,
    progress=None,
    stage=None,
    force_ahead=False,
    migrate=None,
):
    """Replace the content of the backup's database (or ``target``) with the backup.

    Before anything changes: the file's sha256 must match its manifest, and (unless turned off)
    a pre-restore backup of the current state is taken, so a wrong restore can be undone.
    Where the database cannot roll back a failed restore, that backup is mandatory, and put back
    automatically when the restore fails. A restore is a major event: people are told how it went
    (BACKUP_NOTIFY_ON_RESTORE). ``progress(read=, total=, elapsed=, final=)`` hears how much of
    the stored file has been replayed, about once a second; ``stage(phase, backup=None)`` hears
    each phase begin: "checking", "pre-restore backup" (with its catalog row), "loading".

    A backup that holds migrations this code does not know is refused unless ``force_ahead``;
    one that is behind is migrated forward afterwards (``migrate``, else
    BACKUP_MIGRATE_AFTER_RESTORE), and ``migrations_applied`` lists what ran.
    """
    try:
        result = _restore(
            filename,
            actor,
            target,
            pre_restore_backup,
            operation,
            progress,
            stage or ignore_stage,
            force_ahead,
            migrate,
        )
    except (RestoreFailed, DatabaseBusy, MigrateFailed) as exc:  # it was attempted; refusals are not announced
        announce_restore(f"Restore of {filename} failed", actor, target, f"failed: {exc.message}")
        raise
    undo = f" To undo it, restore {result.pre_restore_backup.filename}." if result.pre_restore_backup else ""
    announce_restore(
        f"Database {result.database} restored from {filename}", actor, result.database, f"succeeded.{undo}"
    )
    return result


# The permission each kind of restore needs, by the journal's name for it.
RESTORE_PERMISSIONS = {
    Action.RESTORE: "restore_backup",
    Action.RESTORE_COPY: "restore_copy",
    Action.RESTORE_MODELS: "restore_models",
}


def restore_kind(filename, *, actor, into=None, models=None):
    """What a restore request asks for, as the journal names it: a copy ``into`` a new
    database, the rows of chosen ``models``, or else the whole database. A copy takes the whole
    backup, so it never goes with models; but a backup that does not exist is a 404 first, as
    for any other restore of it."""
    if into is not None and models is not None:
        get_backup(filename, actor=actor)
        raise InvalidRequest(
            'A copy (--into, API: "into") takes the whole backup: it does not go with chosen models (--models, '
            'API: "models"). Nothing was changed.'
        )
    if into is not None:
        return Action.RESTORE_COPY
    if models is not None:
        return Action.RESTORE_MODELS
    return Action.RESTORE


def announce_restore(subject, actor, database, outcome):
    if backup_settings.NOTIFY_ON_RESTORE:
        notify(subject, f"{actor.name} (via {actor.origin}) restored database {database or 'default'}: {outcome}")


def ignore_stage(phase, backup=None):
    pass


def _restore(filename, actor, target, pre_restore_backup, operation, progress, stage, force_ahead, migrate):
    refuse_inside_transaction()
    with journal(
        Action.RESTORE,
        actor,
        filename=filename,
        database=target or "",
        permission=RESTORE_PERMISSIONS[Action.RESTORE],
        operation=operation,
    ) as record:
        backup = get_restorable_backup(filename)
        alias = record.database = target or backup.database
        engine, manifest = check_restore(backup, alias)
        migrations = migration_diff(manifest)
        refuse_ahead(migrations, force_ahead)
        pre_restore_backup = wants_pre_restore_backup(engine, pre_restore_backup)
        warning = verification_warning(backup)
        result = RestoreResult(
            backup=backup, database=alias, finished_at=None, operation=record, method=restore_method(engine)
        )
        if warning:
            result.warnings.append(warning)
        with engine.lock(exclusive=True):
            stage("checking")
            with verified_copy_anywhere(filename, manifest, result.warnings) as source:
                prove_loadable(engine, source, filename, manifest.get("uncompressed_bytes"))
                if result.method == "switch":
                    drop_leftovers_before_switch(engine, record, result.warnings)
                if pre_restore_backup:
                    result.pre_restore_backup = take_pre_restore_backup(
                        engine, actor, f"Before restoring {filename}", stage
                    )
                    record.details = {**record.details, "pre_restore_backup": result.pre_restore_backup.filename}
                    undo = result.pre_restore_backup
                    if not engine.restore_is_transactional:  # its undo must be known to load, too
                        with verified_copy_anywhere(undo.filename, undo.manifest, result.warnings) as undo_source:
                            prove_loadable(engine, undo_source, undo.filename, undo.manifest.get("uncompressed_bytes"))
                after_load = None
                if migrations.behind and wants_migrate(migrate):

                    def after_load():
                        undo = result.pre_restore_backup.filename if result.pre_restore_backup else None
                        result.migrations_applied = migrate_database(alias, restored_from=filename, undo=undo)
                        record.details = {**record.details, "migrations_applied": result.migrations_applied}

                stage("loading")
                warnings, result.undo_database = replace_database(
                    engine,
                    source,
                    filename,
                    expected_size=manifest.get("uncompressed_bytes"),
                    undo=result.pre_restore_backup,
                    progress=progress,
                    after_load=after_load,
                    switch=result.method == "switch",
                    table_rows=manifest.get("table_rows"),
                )
                result.warnings.extend(warnings)
        result.finished_at = timezone.now()
        record.message = f"Restored {engine.describe()} from {filename}"
        if result.undo_database:
            record.message += f" by a switch; the database it replaced is kept as {result.undo_database}"
        record.details = {
            **record.details,
            "warnings": result.warnings,
            "method": result.method,
            "undo_database": result.undo_database,
        }
    return result


@dataclass
class RestorePreview:
    """What a restore would do, for whoever asks before it starts."""

    backup: Backup
    database: dict  # describe_database() of the database it overwrites
    pre_restore_backup: bool  # whether the current state is backed up first
    all_or_nothing: bool  # False where a failed restore is undone by the pre-restore backup instead
    warning: str | None  # about the backup's verification
    migrations: MigrationDiff  # the backup's migrations against the code's: what migrate will do after

    @property
    def refused(self):
        """Why the restore would be refused unless forced (a backup from newer code), or None."""
        return ahead_refusal(self.migrations)


def drop_leftovers_before_switch(engine, record, warnings):
    """Before a switch makes its new database: drop those that interrupted restores left, which
    take the room it needs. Housekeeping: a failure is a warning, never the restore's."""
    try:
        dropped = drop_interrupted_loads(engine, warnings=warnings)
    except BackupError as exc:
        warnings.append(f"The databases that interrupted restores may have left were not looked for: {exc.message}")
        return
    if dropped:
        record.details = {**record.details, "dropped_interrupted_loads": dropped}
    warnings.extend(
        f"Dropped {name}, a database that an interrupted restore had left beside this one." for name in dropped
    )


def restore_preview(filename, *, actor, target=None, kind=Action.RESTORE):
    """What restoring ``filename`` (into ``target``) would overwrite and how, before it runs;
    ``kind`` (``restore_kind``) says whose permission it needs."""
    actor.require(RESTORE_PERMISSIONS[kind])
    backup = get_restorable_backup(filename)
    alias = target or backup.database
    engine = get_engine(alias)
    return RestorePreview(
        backup=backup,
        database=describe_database(alias),
        pre_restore_backup=wants_pre_restore_backup(engine, None),
        all_or_nothing=engine.restore_is_transactional,
        warning=verification_warning(backup),
        migrations=migration_diff(backup.manifest),
    )


def take_pre_restore_backup(engine, actor, description, stage=None):
    """A backup of the current state, taken by a restore before it changes anything: its undo."""
    undo = reserve_backup(engine, actor=actor, description=description, trigger=Trigger.PRE_RESTORE)
    if stage is not None:
        stage("pre-restore backup", undo)
    try:
        return write_backup(engine, undo)
    except StorageFailed as exc:
        raise type(exc)(
            f"The restore did not start: the pre-restore backup (a backup of the current state, taken first so "
            f"that the restore can be undone) could not be stored. {exc.message} The database was not changed."
        ) from None


def check_restore(backup, alias):
    """What can be checked before a restore of ``backup`` into ``alias`` starts: the engines
    match, the tools are there, the manifest exists, the key to decrypt it is at hand, the
    database offers what the dump needs (the roles it grants to).
    Returns (engine, manifest)."""
    engine = get_engine(alias)
    if engine.vendor != backup.engine:
        raise InvalidRequest(
            f"{backup.filename} is a {backup.engine} backup and cannot be restored into the {engine.vendor} "
            f"database {alias!r}. Nothing was changed."
        )
    engine.check_tools()
    manifest = usable_manifest(backup.filename)
    engine.check_restore_requirements(manifest.get("restore_requirements"))
    return engine, manifest


def verification_warning(backup):
    """What a person should hear before restoring ``backup`` into a live database."""
    if backup.verification is None:
        return f"{backup.filename} has never been verified; consider 'manage.py backups verify --level restore' first."
    if not backup.verification.get("passed"):
        return f"{backup.filename} failed its last verification ({backup.verification.get('message')})."
    return None


def restore_method(engine):
    """How to restore into ``engine``'s database (BACKUP_RESTORE_METHOD): "switch" (beside, then
    swap names) or "in-place"; auto takes the switch where the engine and the role can."""
    method = backup_settings.RESTORE_METHOD
    if method == "in-place":
        return method
    if engine.can_restore_beside():
        return "switch"
    if method == "switch":
        raise InvalidRequest(
            f"BACKUP_RESTORE_METHOD is switch, but the {engine.vendor} database {engine.alias!r} cannot be restored "
            "beside the live one (PostgreSQL only, by a role with CREATEDB that owns the database and may create "
            "each of its extensions: trusted ones, or any as a superuser). Nothing was "
            "changed; set BACKUP_RESTORE_METHOD=auto or in-place."
        )
    return "in-place"


def wants_pre_restore_backup(engine, requested):
    """Whether to back up the current state first: as asked, else BACKUP_PRE_RESTORE_BACKUP.
    Where a failed restore cannot be rolled back, always: that backup is its undo."""
    if engine.restore_is_transactional:
        return backup_settings.PRE_RESTORE_BACKUP if requested is None else requested
    if requested is False:
        raise InvalidRequest(
            f"The {engine.vendor} database {engine.alias!r} cannot roll back a failed restore, so the pre-restore "
            "backup that undoes one cannot be skipped. Nothing was changed."
        )
    return True


def refuse_inside_transaction():
    """psql works in its own session: if this process holds a transaction that has touched a
    table, the restore would wait for it forever. Entry points must run restores in autocommit."""
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            raise RuntimeError("restore_backup() must not run inside transaction.atomic()")


@contextmanager
def verified_copy(storage, filename, manifest):
    """A readable copy of the stored file, checked against the manifest's sha256 and size.

    Local files are read twice (once to check, once to restore), which costs little next to the
    restore itself. Remote files are downloaded once, compressed, into a temporary file. A read
    that fails midway is the storage's failure, like one that fails at the start.
    """
    try:
        source = storage.open(filename)
    except FileNotFoundError:
        raise BackupNotFound(storage.missing(filename)) from None
    with source, ExitStack() as stack:
        try:
            if storage.directory is None:
                copy = stack.enter_context(tempfile.TemporaryFile())
                reader = CountingReader(source)
                shutil.copyfileobj(reader, copy, CHUNK_SIZE)
                digest, size, source = reader.sha256, reader.size, copy
            else:
                digest, size = file_sha256(source)
            source.seek(0)
        except Exception as exc:
            if is_storage_failure(exc):
                raise storage_error(exc, f"reading {filename}", storage) from None
            raise
        if size != manifest.get("size_bytes") or digest != manifest.get("sha256"):
            raise BackupDamaged(
                f"{filename} does not match its manifest (sha256 or size differs): the file is damaged or "
                "was changed since it was written. Nothing was changed; use another backup."
            )
        yield source


@contextmanager
def verified_copy_anywhere(filename, manifest, warnings):
    """``verified_copy`` from the first destination whose copy is there, intact and in reach, in
    destination order; a warning says so when it is not the first."""
    problems = []
    with ExitStack() as stack:
        for name, storage in backup_storages():
            try:
                source = stack.enter_context(verified_copy(storage, filename, manifest))
            except (BackupNotFound, BackupDamaged, StorageFailed) as problem:
                problems.append((name, problem))
                continue
            if problems:
                unusable_copies = ", ".join(f"the copy in {other} {unusable(problem)}" for other, problem in problems)
                warnings.append(
                    f"Of {filename}, {unusable_copies}; it was restored from the copy in {name} ({storage.where})."
                )
                logger.warning("Restoring %s from the copy in %s: %s", filename, name, unusable_copies)
            break
        else:
            last = problems[-1][1]
            if len(problems) == 1:
                raise last
            raise type(last)(
                f"No copy of {filename} can be used: "
                + ", ".join(f"the copy in {other} {unusable(problem)}" for other, problem in problems)
                + ". Nothing was changed."
            ) from None
        yield source


def unusable(problem):
    if isinstance(problem, BackupNotFound):
        return "is missing"
    if isinstance(problem, BackupDamaged):
        return "does not match its checksum"
    return f"cannot be read ({problem.message})"


def replace_database(
    engine,
    source,
    filename,
    expected_size=None,
    undo=None,
    progress=None,
    after_load=None,
    switch=False,
    table_rows=None,
):
    """Feed the decompressed dump to the engine, carrying the catalog tables across.
    Returns (warnings about the catalog, the undo database of a switch or None); the restore
    itself either happened or raised.

    ``after_load()`` (the migrate after a restore) runs before the catalog is carried back, so
    that the catalog's rows go into tables of the code's schema; they are carried back even when
    it fails.

    A restore that stopped partway (``RestoreIncomplete``, from engines that cannot roll back)
    is undone by restoring ``undo``, the pre-restore backup.
    """
    carried = snapshot_carried_rows(engine.alias)
    connections.close_all()
    try:
        undo_database = load_dump(
            engine, source, filename, expected_size, table_rows=table_rows, switch=switch, progress=progress
        )
        if switch:
            connections.close_all()  # the switch ended their sessions: reconnect, to the new database
    except RestoreIncomplete as incomplete:
        if undo is None:
            raise
        failure = undo_incomplete_restore(engine, filename, incomplete, undo)
        carry_back(carried)
        raise failure from incomplete
    try:
        if after_load is not None:
            after_load()
    finally:
        warnings = carry_back(carried)
    return warnings, undo_database


def load_dump(engine, source, filename, expected_size=None, table_rows=None, switch=False, progress=None):
    """In place, or beside the live database and then switched (returning the undo database).
    ``progress`` hears how much of the stored file has been read (``ReadProgress``)."""
    if progress is not None:
        source = ReadProgress(source, progress)
    reader = codec_for(filename).decompressor(source)
    guarded = GuardedReader(reader, filename, expected_size)
    timeout = backup_settings.RESTORE_LOCK_TIMEOUT
    try:
        if switch:
            undo_database = engine.restore_beside(
                guarded, timeout, lambda loaded, copied: check_loaded(loaded, copied, table_rows)
            )
        else:
            engine.restore(guarded, timeout)
            undo_database = None
    finally:
        reader.close()
    if progress is not None:
        source.finish()
    return undo_database


def prove_loadable(engine, source, filename, expected_size):
    """Where a failed restore cannot be rolled back (MySQL's DDL), load the dump into a scratch
    database first, before the live one is touched: a dump that does not load there (bad SQL, a
    damaged file, an object the user may not create) is refused with nothing changed. The
    service proves the pre-restore backup the same way, so that the undo of a restore that
    still fails in the live database (a lost connection, a killed client) is known to load."""
    if engine.restore_is_transactional:
        return
    with engine.scratch() as scratch:
        try:
            load_dump(scratch, source, filename, expected_size)
        except BackupError as exc:
            refusal = RestoreFailed(
                f"{filename} does not load into a scratch database ({exc.message.rstrip('.')}), so it was not "
                f"restored: the database {engine.describe()} was not touched and nothing was changed."
            )
            refusal.status_code = exc.status_code
            raise refusal from None
    source.seek(0)


def check_loaded(loaded, copied, table_rows):
    """A database loaded beside the live one holds the rows its manifest recorded, or the switch
    does not happen: as the server answered each COPY of the load (``copied``), which costs
    nothing more, or else counted in the loaded database."""
    from .verification import VerificationFailed, compare_row_counts  # verification builds on this module

    table_rows = loaded.recorded_rows(table_rows)

    def count(table):
        if copied is not None:
            return copied.get(table, 0)  # a table without rows had no COPY
        return loaded.count_rows(table, among=table_rows)

    try:
        compare_row_counts(table_rows, count)
    except VerificationFailed as exc:
        raise RestoreFailed(f"Database restore failed; the database was not changed. {exc.message}") from None


def undo_incomplete_restore(engine, filename, incomplete, undo):
    """Put the pre-restore backup ``undo`` back after ``incomplete``; returns the error to raise,
    which tells both steps and, if the undo failed too, which backup to restore by hand."""
    failure = incomplete.message.rstrip(".")
    logger.error("Restoring %s stopped partway (%s); restoring %s to undo it", filename, failure, undo.filename)
    try:
        with verified_copy_anywhere(undo.filename, undo.manifest, []) as source:
            load_dump(engine, source, undo.filename, undo.manifest.get("uncompressed_bytes"))
    except Exception as exc:
        undo_failure = exc.message.rstrip(".") if isinstance(exc, BackupError) else "unexpected error"
        message = (
            f"THE DATABASE {engine.describe()} IS LEFT PARTLY RESTORED. Restoring {filename} stopped partway "
            f"({failure}), and restoring the pre-restore backup {undo.filename} automatically failed too "
            f"({undo_failure}). Restore {undo.filename} now: 'manage.py backups restore {undo.filename}', or by "
            "hand as the README's 'Restoring without the app' shows."
        )
        logger.critical("%s", message, exc_info=not isinstance(exc, BackupError))
        return RestoreIncomplete(message, pre_restore_backup=undo.filename, undone=False)
    return RestoreIncomplete(
        f"Restoring {filename} failed partway ({failure}). This database cannot roll back a failed restore, so "
        f"the pre-restore backup {undo.filename} was restored automatically: the database is as it was before.",
        status_code=incomplete.status_code,
        pre_restore_backup=undo.filename,
        undone=True,
    )


def carry_back(carried):
    if carried is None:
        return []
    return restore_carried_rows(carried) or sync_after_restore()


class GuardedReader:
    """Turns a damaged compressed stream into ``BackupDamaged`` while the engine reads it, and
    a stream that ends before the size its manifest recorded too: the sha256 vouches for the
    stored bytes, not for a decompressor that stops early.

    The engine aborts the restore on any error raised here, before the database commits.
    """

    def __init__(self, reader, filename, expected_size=None):
        self.reader = reader
        self.filename = filename
        self.expected_size = expected_size
        self.size = 0

    def read(self, size=-1):
        try:
            data = self.reader.read(size)
        except (OSError, EOFError, ValueError) as exc:
            raise BackupDamaged(f"{self.filename} cannot be decompressed ({exc}); the restore was stopped.") from None
        self.size += len(data)
        if not data and self.expected_size is not None and self.size != self.expected_size:
            raise BackupDamaged(
                f"{self.filename} decompressed to {self.size} bytes, not the {self.expected_size} its manifest "
                "recorded; the restore was stopped."
            )
        return data


def snapshot_carried_rows(alias):
    """The catalog and journal rows, when they live in the database about to be replaced."""
    catalog = router.db_for_write(Backup)
    if catalog != alias:
        return None
    return {model: list(model._base_manager.using(catalog).all()) for model in CARRIED_MODELS}


CATALOG_WARNING = (
    "The backup catalog could not be rebuilt after the restore (the restored database may predate "
    "this version of the backups app): run 'manage.py migrate' and then 'manage.py backups sync'."
)


COPIES_WARNING = (
    "The restored database predates the list of copies, so that list is empty now: run 'manage.py migrate'; "
    "the copies' databases are still on the server."
)


def restore_carried_rows(carried):
    """Put the rows back as they were before the restore; returns warnings, if any."""
    catalog = router.db_for_write(Backup)
    # A backup from before the list of copies existed has no table for it: the rest still goes back.
    copies = carried.pop(DatabaseCopy, [])
    try:
        with transaction.atomic(using=catalog):
            for model, rows in carried.items():
                model._base_manager.using(catalog).all().delete()
                model._base_manager.using(catalog).bulk_create(rows, batch_size=500)
    except DatabaseError:
        logger.exception("The catalog could not be carried across the restore")
        return [CATALOG_WARNING]
    if DatabaseCopy._meta.db_table not in connections[catalog].introspection.table_names():
        return [COPIES_WARNING] if copies else []
    with transaction.atomic(using=catalog):
        DatabaseCopy.objects.using(catalog).all().delete()
        DatabaseCopy.objects.using(catalog).bulk_create(copies)
    return []


def sync_after_restore():
    """Reconcile the carried catalog with storage (files that vanished meanwhile). The restore
    is done by now: a storage out of reach only earns a warning, never a failed restore."""
    try:
        sync_catalog()
    except Exception:
        logger.exception("The catalog could not be synchronised after the restore")
        return [CATALOG_WARNING]
    return []


class ReadProgress(RawReader):
    """Counts the bytes of the stored file consumed so far and reports them about once a second
    (and once at the end) to ``callback(read=, total=, elapsed=, final=)``.

    Only to the callback, never to the catalog: the catalog may live in the database being
    restored, whose tables psql keeps locked until it commits, so a write there would wait for
    the very restore it describes.
    """

    def __init__(self, raw, callback):
        self.raw = raw
        self.callback = callback
        self.total = raw.seek(0, os.SEEK_END)
        raw.seek(0)
        self.consumed = 0
        self.started = self.last = time.monotonic()

    def read(self, size=-1):
        data = self.raw.read(size)
        self.consumed += len(data)
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.callback(read=self.consumed, total=self.total, elapsed=now - self.started, final=False)
        return data

    def finish(self):
        elapsed = time.monotonic() - self.started
        self.callback(read=self.consumed, total=self.total, elapsed=elapsed, final=True)
