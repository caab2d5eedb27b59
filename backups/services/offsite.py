"""Off-site copies: a second storage (``BACKUP_OFFSITE_STORAGE_URL``) holding a verified copy of
every backup, so that a backup does not die with the disk or the bucket it was written to.

A copy counts once its bytes have been read back from the off-site storage and match the
backup's sha256; only then is its manifest written there, so an unfinished or damaged copy
never lists. When the copy fails, the backup still counts: it is complete and checked in the
primary storage. The failure is visible: the row's ``offsite_error`` (shown by the API, the
list and the admin), an error in the log, a warning in the answer to whoever made the backup;
and ``backups sync`` tries the copy again.
"""

import logging
import shutil
from contextlib import suppress

from ..compression import CHUNK_SIZE, CountingWriter, file_sha256
from ..encryption import check_decryptable
from ..exceptions import UNEXPECTED, BackupDamaged, BackupError, BackupNotFound, StorageFailed
from ..models import Backup
from ..naming import manifest_name
from ..storage import OFFSITE, PRIMARY, backup_storages, get_offsite_storage, get_storage

logger = logging.getLogger("backups")


def copy_offsite(backup):
    """Copy a succeeded backup to the off-site storage, if there is one, and record the outcome
    on its row. Never raises: a failed off-site copy does not undo a good backup."""
    offsite = get_offsite_storage()
    if offsite is None:
        return backup
    try:
        copy_file(backup, get_storage(), offsite)
    except BackupError as exc:
        record_failure(backup, exc.message)
    except Exception:
        logger.exception("Unexpected error while copying %s off-site", backup.filename)
        record_failure(backup, UNEXPECTED)
    else:
        backup.offsite_error = ""
        logger.info("Backup %s copied off-site to %s", backup.filename, offsite.where)
    backup.save(update_fields=["locations", "offsite_error", "manifest"])
    return backup


def copy_file(backup, primary, offsite):
    """Stream the file across, read it back to check its sha256, then write the manifests."""
    filename = backup.filename
    try:
        source = primary.open(filename)
    except FileNotFoundError:
        raise BackupNotFound(f"The file {filename} is missing from the primary storage.") from None
    with source, offsite.writer(filename, overwrite=True) as target:
        sent = CountingWriter(target)
        shutil.copyfileobj(source, sent, CHUNK_SIZE)
        if (sent.sha256, sent.size) != (backup.sha256, backup.size_bytes):
            # Raised inside the writer: the upload is abandoned and nothing is left behind.
            raise BackupDamaged(f"The primary copy of {filename} does not match its checksum; it was not copied.")
    try:
        with offsite.open(filename) as stored:
            digest, size = file_sha256(stored)
    except FileNotFoundError:
        digest, size = None, None
    if (digest, size) != (backup.sha256, backup.size_bytes):
        offsite.delete(filename)
        raise BackupDamaged(
            f"The off-site copy of {filename} did not match its checksum when read back; it was deleted."
        )
    manifest = {**backup.manifest, "locations": [PRIMARY, OFFSITE]}
    try:
        offsite.write_json(manifest_name(filename), manifest)
    except BaseException:
        with suppress(Exception):
            offsite.delete(filename)  # a copy without its manifest would be an orphan nobody lists
        raise
    # Only now is there an off-site copy to record; a failed write above leaves the row as it was.
    backup.locations, backup.manifest = manifest["locations"], manifest
    try:
        primary.write_json(manifest_name(filename), backup.manifest)
    except StorageFailed as exc:
        # The copy is done; the primary manifest only misses the note of where the copies are.
        logger.warning("Could not record the off-site copy in the manifest of %s: %s", filename, exc.message)


def record_failure(backup, reason):
    backup.offsite_error = f"The off-site copy failed: {reason}"
    backup.locations = [label for label in backup.locations if label != OFFSITE]
    logger.error("Backup %s has no off-site copy: %s", backup.filename, reason)


def copy_missing():
    """Copy every backup that has a primary copy but no off-site one (its copy failed, or it is
    older than the off-site storage). Returns (copied, failed) filenames."""
    copied, failed = [], []
    if get_offsite_storage() is None:
        return copied, failed
    for backup in Backup.objects.restorable().order_by("created_at"):
        if PRIMARY not in backup.locations or OFFSITE in backup.locations:
            continue
        copy_offsite(backup)
        (copied if OFFSITE in backup.locations else failed).append(backup.filename)
    return copied, failed


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
    """The stored file from the first storage that has it (the primary first), for downloads."""
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
