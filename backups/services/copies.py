"""Copies of every backup in each destination (``BACKUP_DESTINATIONS``, or the primary and the
off-site storage), so that a backup does not die with the disk or the bucket it was written to.

A backup is written to every destination at once (``storage.FanOutWriter``). A copy counts once
it is complete and, where the destination verifies, its bytes have been read back and match the
backup's sha256; only then is its manifest written there, so an unfinished or damaged copy never
lists. A destination that fails does not fail the others: the backup counts while one good copy
exists. Each failure is visible: the row's ``offsite_error`` (one line per destination, shown by
the API, the list and the admin), an error in the log, a warning for whoever made the backup, and
the health report; ``backups sync`` makes the missing copies from a good one.
"""

import logging
import shutil
from contextlib import suppress

from ..compression import CHUNK_SIZE, CountingWriter, file_sha256
from ..encryption import check_decryptable
from ..exceptions import UNEXPECTED, BackupDamaged, BackupError, BackupNotFound, StorageFailed
from ..models import Backup
from ..naming import manifest_name
from ..storage import backup_storages, destinations, failure_reason

logger = logging.getLogger("backups")


def failure_line(name, reason):
    return f"The copy to {name} failed: {reason}"


def settle_copies(backup, written, failures):
    """After a backup's bytes went to the destinations ``written``: check each copy where its
    destination verifies, then write the manifest to every good one. Sets ``locations`` and the
    failures on the row (not saved); raises when no copy is left."""
    failures = {name: failure_reason(exc) for name, exc in failures.items()}
    good = []
    for destination in destinations():
        if destination.name not in written:
            continue
        try:
            if destination.verify:
                check_copy(destination.storage, backup)
        except Exception as exc:  # an S3 error while reading back is as much this copy's failure
            failures[destination.name] = failure_reason(exc)
            continue
        good.append(destination.name)
    listed = list(good)  # what the first manifests say, before any manifest write fails
    for name in listed:
        try:
            write_manifest_to(name, backup, listed, overwrite=False)
        except Exception as exc:
            failures[name] = failure_reason(exc)
            good.remove(name)
    if not good:
        raise StorageFailed("No copy of the backup could be stored: " + "; ".join(failures.values()))
    if good != listed:  # the manifests written name a copy that does not count
        for name in good:
            write_manifest_to(name, backup, good, overwrite=True)
    storages = dict(backup_storages())
    for name in set(written) - set(good):
        with suppress(Exception):  # a copy that does not count must not list
            storages[name].delete(backup.filename)
    record(backup, good, failures)


def record(backup, good, failures):
    backup.locations = good
    backup.manifest = {**backup.manifest, "locations": good}
    backup.offsite_error = "\n".join(failure_line(name, reason) for name, reason in failures.items())
    for name, reason in failures.items():
        logger.error("Backup %s has no copy in %s: %s", backup.filename, name, reason)


def copy_locations(backup):
    """(destination name, where it is) of each verified copy of ``backup``; where is None for a
    destination that is no longer configured."""
    where = {name: storage.where for name, storage in backup_storages()}
    return [(name, where.get(name)) for name in backup.locations or []]


def write_manifest_to(name, backup, locations, overwrite):
    storage = dict(backup_storages())[name]
    storage.write_json(manifest_name(backup.filename), {**backup.manifest, "locations": locations}, overwrite=overwrite)


def check_copy(storage, backup):
    """Read the stored copy back; a copy that does not match is deleted."""
    try:
        with storage.open(backup.filename) as stored:
            digest, size = file_sha256(stored)
    except FileNotFoundError:
        digest, size = None, None
    if (digest, size) != (backup.sha256, backup.size_bytes):
        storage.delete(backup.filename)
        raise BackupDamaged(f"The copy of {backup.filename} did not match its checksum when read back; it was deleted.")


def copy_to(backup, destination):
    """Copy a stored backup from its first good copy to ``destination``, check it, and record
    it in the manifests and on the row (saved). Never raises."""
    try:
        with (
            open_stored(backup.filename) as source,
            destination.storage.writer(backup.filename, overwrite=True) as target,
        ):
            sent = CountingWriter(target)
            shutil.copyfileobj(source, sent, CHUNK_SIZE)
            if (sent.sha256, sent.size) != (backup.sha256, backup.size_bytes):
                # Raised inside the writer: the write is abandoned and nothing is left behind.
                raise BackupDamaged(
                    f"The stored copy of {backup.filename} does not match its checksum; it was not copied."
                )
        check_copy(destination.storage, backup)
        locations = [name for name, _storage in backup_storages() if name in (*backup.locations, destination.name)]
        try:
            write_manifest_to(destination.name, backup, locations, overwrite=True)
        except BaseException:
            with suppress(Exception):
                destination.storage.delete(backup.filename)  # a copy without its manifest would be an orphan
            raise
    except BackupError as exc:
        reason = exc.message
    except Exception:
        logger.exception("Unexpected error while copying %s to %s", backup.filename, destination.name)
        reason = UNEXPECTED
    else:
        reason = None
        backup.locations = locations
        backup.manifest = {**backup.manifest, "locations": locations}
        for name in locations:
            if name != destination.name:
                with suppress(StorageFailed):  # only the note of where the copies are is missed
                    write_manifest_to(name, backup, locations, overwrite=True)
        logger.info("Backup %s copied to %s", backup.filename, destination.name)
    lines = [
        line for line in backup.offsite_error.splitlines() if not line.startswith(failure_line(destination.name, ""))
    ]
    if reason is not None:
        lines.append(failure_line(destination.name, reason))
        logger.error("Backup %s has no copy in %s: %s", backup.filename, destination.name, reason)
    backup.offsite_error = "\n".join(lines)
    backup.save(update_fields=["locations", "offsite_error", "manifest"])
    return reason is None


def copy_missing():
    """Copy every restorable backup to each destination that lacks a copy (its copy failed, or it
    is older than the destination). Returns (copied, failed) filenames; a backup is failed when
    any of its copies failed."""
    copied, failed = [], []
    targets = destinations()
    for backup in Backup.objects.restorable().order_by("created_at"):
        if not backup.locations:
            continue
        missing = [destination for destination in targets if destination.name not in backup.locations]
        if missing:
            outcomes = [copy_to(backup, destination) for destination in missing]
            (copied if all(outcomes) else failed).append(backup.filename)
    return copied, failed


def remove_copies(backup, names):
    """Delete the copies in destinations ``names`` (past their retention) while the others stay;
    the data file goes before its manifest, and the remaining manifests say where copies are."""
    storages = dict(backup_storages())
    for name in names:
        storages[name].delete(backup.filename)
        storages[name].delete(manifest_name(backup.filename))
    backup.locations = [name for name in backup.locations if name not in names]
    backup.manifest = {**backup.manifest, "locations": backup.locations}
    write_manifest(backup)
    backup.save(update_fields=["locations", "manifest"])


def find_manifest(filename):
    """The manifest of ``filename`` from the first storage that has a readable one, or None.
    A storage that cannot be reached is skipped while another one answers."""
    problem = None
    for _label, storage in backup_storages():
        try:
            manifest = storage.read_json(manifest_name(filename))
        except StorageFailed as exc:
            problem = problem or exc
            continue
        if isinstance(manifest, dict) and manifest.get("filename") == filename:
            return manifest
    if problem is not None:
        raise problem
    return None


def usable_manifest(filename):
    """The manifest of ``filename``, from whichever storage has it, with the key to read the
    file at hand; raises ``BackupNotFound`` or the key's error otherwise."""
    manifest = find_manifest(filename)
    if manifest is None:
        raise BackupNotFound(f"The manifest of {filename} is missing; run 'manage.py backups sync'.")
    check_decryptable(filename, manifest)
    return manifest


def write_manifest(backup):
    """Rewrite the backup's manifest in every storage that holds a copy of it."""
    for label, storage in backup_storages():
        if label in backup.locations:
            storage.write_json(manifest_name(backup.filename), backup.manifest)


def open_stored(filename):
    """The stored file from the first storage that has it (in destination order), for downloads."""
    problem = None
    for _label, storage in backup_storages():
        try:
            return storage.open(filename)
        except FileNotFoundError:
            continue
        except StorageFailed as exc:
            problem = problem or exc
    if problem is not None:
        raise problem
    raise BackupNotFound(f"The file {filename} is missing from the backup storage.")
