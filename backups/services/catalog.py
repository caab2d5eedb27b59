"""Keeping the catalog (a table) true to the storage (the manifests), which is the truth."""

import logging
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils import timezone

from ..models import Action, Backup, BackupStatus, Operation, OperationStatus
from ..naming import MANIFEST_SUFFIX, is_backup_filename, manifest_name
from ..storage import backup_storages, get_storage, process_alive
from .copies import copy_missing
from .journal import journal

logger = logging.getLogger("backups")

PARTIAL_MAX_AGE = 24 * 3600
# A running backup that has not reported progress for this long has lost its process; so has a
# job that no worker ever picked up.
STALE_AFTER = timedelta(hours=1)
INTERRUPTED = "Interrupted: the process writing this backup stopped before it finished."
OPERATION_INTERRUPTED = "Interrupted: the process doing it stopped before it finished."


@dataclass
class SyncResult:
    added: list = field(default_factory=list)
    updated: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    interrupted: list = field(default_factory=list)
    removed_partials: list = field(default_factory=list)
    copied_offsite: list = field(default_factory=list)
    offsite_failed: list = field(default_factory=list)

    @property
    def summary(self):
        text = (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.missing)} missing, "
            f"{len(self.interrupted)} interrupted, {len(self.removed_partials)} temporary files removed"
        )
        if self.copied_offsite or self.offsite_failed:
            text += f", {len(self.copied_offsite)} copied where copies were missing, {len(self.offsite_failed)} failed"
        return text


def sync_catalog(*, actor=None, remove_partials=True):
    """Rebuild the catalog from the manifests in storage.

    Every destination counts: a backup whose file is in any of them is restorable, and its row
    says where (``locations``). New manifests become rows, rows whose file vanished everywhere
    are marked missing, backups whose process died are marked failed, and temporary files of
    interrupted backups are removed. With an ``actor`` (a person asked for it) the sync is
    checked and journaled, and destinations that lack a copy get one; the service's own calls,
    after a restore or before a cleanup, are part of those operations.
    """
    if actor is None:
        return _sync(remove_partials)
    with journal(Action.SYNC, actor, permission="add_backup") as operation:
        result = _sync(remove_partials)
        result.copied_offsite, result.offsite_failed = copy_missing()
        operation.message = result.summary
    return result


def _sync(remove_partials):
    copies = backup_storages()
    listed = {label: set(storage.names()) for label, storage in copies}
    result = SyncResult()
    stored = {
        name.removesuffix(MANIFEST_SUFFIX)
        for names in listed.values()
        for name in names
        if name.endswith(MANIFEST_SUFFIX) and is_backup_filename(name.removesuffix(MANIFEST_SUFFIX))
    }
    rows = {row.filename: row for row in Backup.objects.filter(filename__in=stored)}
    for filename in sorted(stored):
        row = rows.get(filename)
        locations = [label for label, _storage in copies if filename in listed[label]]
        present = bool(locations)
        if row is not None and row.status == BackupStatus.SUCCEEDED and present and row.locations == locations:
            continue  # already known and intact: no need to read its manifest
        manifest = read_listed_manifest(copies, listed, filename)
        if not isinstance(manifest, dict) or manifest.get("filename") != filename:
            logger.warning("Ignoring the unreadable manifest of %s", filename)
            continue
        status = BackupStatus.SUCCEEDED if present else BackupStatus.MISSING
        if row is None:
            Backup.objects.create(**row_fields(manifest), status=status, locations=locations)
            (result.added if present else result.missing).append(filename)
        else:
            for name, value in row_fields(manifest).items():
                setattr(row, name, value)
            row.status = status
            row.locations = locations
            row.save()
            (result.updated if present else result.missing).append(filename)
    held = set().union(*listed.values())
    vanished = Backup.objects.filter(status=BackupStatus.SUCCEEDED).exclude(filename__in=stored & held)
    for row in vanished:
        row.status = BackupStatus.MISSING
        row.locations = []
        row.save(update_fields=["status", "locations"])
        result.missing.append(row.filename)
    result.interrupted = mark_interrupted()
    if remove_partials:
        for _label, storage in copies:
            result.removed_partials += storage.remove_partial_files(PARTIAL_MAX_AGE)
    logger.info("Backup catalog synchronised: %s", result.summary)
    return result


def read_listed_manifest(copies, listed, filename):
    """The manifest from the first storage that lists it."""
    for label, storage in copies:
        if manifest_name(filename) in listed[label]:
            manifest = storage.read_json(manifest_name(filename))
            if manifest is not None:
                return manifest
    return None


def row_fields(manifest):
    """Catalog fields from a manifest written by ``build_manifest``."""
    created_at = datetime.fromisoformat(manifest["created_at"])
    finished_at = manifest.get("finished_at")
    return {
        "filename": manifest["filename"],
        "database": manifest.get("database", "default"),
        "engine": manifest.get("engine", ""),
        "database_name": manifest.get("database_name", ""),
        "database_host": manifest.get("database_host") or "",
        "description": manifest.get("description") or "",
        "trigger": manifest.get("trigger", "manual"),
        "origin": manifest.get("origin", "command"),
        "created_by": manifest.get("created_by", ""),
        "created_at": created_at,
        "finished_at": datetime.fromisoformat(finished_at) if finished_at else None,
        "size_bytes": manifest.get("size_bytes"),
        "uncompressed_bytes": manifest.get("uncompressed_bytes"),
        "sha256": manifest.get("sha256", ""),
        "bytes_written": manifest.get("size_bytes") or 0,
        "manifest": manifest,
        **verification_fields(manifest.get("verification")),
    }


def verification_fields(verification):
    """The catalog's record of the last verification, from the one a manifest keeps."""
    if not isinstance(verification, dict) or "checked_at" not in verification:
        return {"verification": None, "verified_at": None}
    return {"verification": verification, "verified_at": datetime.fromisoformat(verification["checked_at"])}


def worker_gone(worker):
    """True when ``worker`` (host:pid) is a process of this host that has ended. Processes of
    other hosts cannot be checked from here; their rows go stale instead."""
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


def mark_interrupted():
    """Backups and operations whose process is gone: dead on this host, or silent for too long.
    Returns the filenames of the backups."""
    now = timezone.now()
    interrupted = []
    for row in Backup.objects.filter(status__in=(BackupStatus.PENDING, BackupStatus.RUNNING)):
        last_sign = row.progress_at or row.created_at
        if worker_gone(row.worker) or now - last_sign > STALE_AFTER:
            row.mark_failed(INTERRUPTED)
            interrupted.append(row.filename)
    for operation in Operation.objects.filter(status__in=(OperationStatus.PENDING, OperationStatus.RUNNING)):
        if operation_interrupted(operation, now):
            mark_operation_interrupted(operation, now)
    return interrupted


def operation_interrupted(operation, now):
    """An operation whose process died (a worker, or a web worker killed by its timeout), or a
    job that no worker ever picked up."""
    if operation.status == OperationStatus.PENDING and now - operation.started_at > STALE_AFTER:
        return True  # whatever host was to run it
    worker = operation.details.get("worker", "") if isinstance(operation.details, dict) else ""
    return bool(worker) and worker_gone(worker)


def mark_operation_interrupted(operation, now):
    operation.status = OperationStatus.FAILED
    operation.message = OPERATION_INTERRUPTED
    operation.finished_at = now
    operation.save(update_fields=["status", "message", "finished_at"])
    logger.warning("Backup %s %s by %s: %s", operation.action, operation.pk, operation.actor, OPERATION_INTERRUPTED)


def unlisted_manifests():
    """(how many manifests in the primary storage have no row in the catalog, that storage)."""
    storage = get_storage()
    names = {
        name.removesuffix(MANIFEST_SUFFIX)
        for name in storage.names()
        if name.endswith(MANIFEST_SUFFIX) and is_backup_filename(name.removesuffix(MANIFEST_SUFFIX))
    }
    return len(names - set(Backup.objects.filter(filename__in=names).values_list("filename", flat=True))), storage
