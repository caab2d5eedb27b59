"""Long operations in a process of their own, so that no web request waits for them.

An asynchronous request does at once everything that can be checked at once (permission, input,
tools, a backup or restore already holding the database) and leaves pending rows: the journal's
``Operation`` and, for a backup, its catalog row. A detached ``manage.py backups job ID`` process
(no message broker) then claims the operation and runs the very service functions a synchronous
call runs, continuing those rows, which are what a client polls. A worker that dies is found out
by its pid: ``catalog.mark_interrupted`` (and every read of a backup) marks its rows failed.
"""

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid

from django.conf import settings
from django.db import router
from django.utils import timezone

from ..conf import backup_settings
from ..engines import get_engine
from ..exceptions import BackupError, BackupNotFound, InvalidRequest, OperationInProgress, WorkerUnavailable, reason_of
from ..models import Action, Backup, BackupStatus, Operation, OperationStatus, Trigger
from .backups import clean_description, create_backup, get_restorable_backup, mark_failed, reserve_backup
from .catalog import mark_operation_interrupted, operation_interrupted
from .database_copies import copy_location, restore_copy
from .journal import Actor, journal, this_worker
from .migrations import migration_diff, refuse_ahead
from .model_restore import resolve_models, restore_models
from .restore import (
    RESTORE_PERMISSIONS,
    check_restore,
    restore_backup,
    restore_kind,
    wants_pre_restore_backup,
)

logger = logging.getLogger("backups")

# Seconds a poll waits for a restore of the journal's database to put the journal back.
JOURNAL_RESTORE_WAIT = 10

# The service that carries out each kind of restore, by the journal's action.
RESTORES = {
    Action.RESTORE: restore_backup,
    Action.RESTORE_COPY: restore_copy,
    Action.RESTORE_MODELS: restore_models,
}


def start_backup(*, actor, description="", database="default"):
    """Reserve a backup and start a worker that writes it; returns the pending catalog row."""
    with journal(Action.CREATE, actor, database=database, permission="add_backup") as operation:
        description = clean_description(description)
        engine = get_engine(database)
        engine.check_tools()
        refuse_if_locked(engine, exclusive=False)
        backup = reserve_backup(engine, actor=actor, description=description, trigger=Trigger.MANUAL)
        operation.filename = backup.filename
        try:
            worker = hand_over(operation)
        except BaseException as exc:
            reason = reason_of(exc)
            mark_failed(backup, reason)
            raise
    Backup.objects.filter(pk=backup.pk, status=BackupStatus.PENDING).update(worker=worker)
    return backup


def start_restore(
    filename,
    *,
    actor,
    target=None,
    into=None,
    models=None,
    include_related=False,
    pre_restore_backup=None,
    force_ahead=False,
    migrate=None,
):
    """Check a restore (of the whole database; as a copy ``into`` a new database; of chosen
    ``models``: ``restore_kind``) and start a worker that carries it out with the service that
    does it synchronously; returns its pending operation, whose action says which kind it is."""
    action = restore_kind(filename, actor=actor, into=into, models=models)
    with journal(
        action, actor, filename=filename, database=target or "", permission=RESTORE_PERMISSIONS[action]
    ) as operation:
        backup = get_restorable_backup(filename)
        alias = operation.database = target or backup.database
        engine, manifest = check_restore(backup, alias)
        if action == Action.RESTORE_COPY:
            copy_location(engine, into)
            arguments = {"into": into}
        elif action == Action.RESTORE_MODELS:
            resolve_models(models)
            arguments = {"models": models, "include_related": include_related, "pre_restore_backup": pre_restore_backup}
        else:
            refuse_ahead(migration_diff(manifest), force_ahead)
            arguments = {
                "pre_restore_backup": wants_pre_restore_backup(engine, pre_restore_backup),
                "force_ahead": force_ahead,
                "migrate": migrate,
            }
        if action != Action.RESTORE_COPY:  # a copy leaves the live database alone
            refuse_if_locked(engine, exclusive=True)
        # What the worker passes to the service, beside what the row holds already.
        operation.details = {**operation.details, "arguments": arguments}
        hand_over(operation)
    return operation


def refuse_if_locked(engine, exclusive):
    """Answer 409 now rather than from the worker: the lock is taken and released at once."""
    with engine.lock(exclusive=exclusive):
        pass


def hand_over(operation):
    """Save ``operation`` as pending and start its worker, which owns the row from then on.
    Returns the worker's host:pid; raises ``WorkerUnavailable`` when it cannot be started."""
    operation.status = OperationStatus.PENDING
    operation.save()
    try:
        process = spawn_worker(operation.pk)
    except OSError as exc:
        logger.exception("Could not start the worker of job %s", operation.pk)
        raise WorkerUnavailable(
            f"The background worker could not be started ({exc.strerror or exc}); nothing was done."
        ) from None
    worker = this_worker(process.pid)
    operation.details = {**operation.details, "worker": worker}
    # Unless the worker has already claimed the row (and recorded itself, the same host:pid).
    Operation.objects.filter(pk=operation.pk, status=OperationStatus.PENDING).update(details=operation.details)
    return worker


def spawn_worker(job_id):
    """``manage.py backups job ID`` in a session of its own, detached from the request: it
    outlives it, and a signal meant for the server (Ctrl+C, a worker timeout) does not reach it.
    Its output goes to BACKUP_JOB_LOG."""
    log_path = backup_settings.JOB_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ)
    environment.setdefault("DJANGO_SETTINGS_MODULE", settings.SETTINGS_MODULE)
    # The worker imports the same code as this process, wherever it was started from.
    environment["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "django", "backups", "--verbosity", "2", "job", str(job_id)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    # Reaps the worker when it ends, so that its pid does not linger as a zombie that looks alive.
    threading.Thread(target=process.wait, name=f"backup-job-{job_id}", daemon=True).start()
    return process


def run_job(job_id):
    """The worker's side: claim the pending operation ``job_id`` and run it here, as the person
    who asked for it (whose permission was checked then). Returns the service's result."""
    claimed = Operation.objects.filter(pk=job_id, status=OperationStatus.PENDING).update(status=OperationStatus.RUNNING)
    if not claimed:
        raise InvalidRequest(f"There is no pending job {job_id}.")
    operation = Operation.objects.get(pk=job_id)
    operation.details = {**operation.details, "worker": this_worker()}
    operation.save(update_fields=["details"])
    actor = Actor(origin=operation.origin, client_address=operation.client_address, username=operation.actor)
    if operation.action == Action.CREATE:
        backup = Backup.objects.get(filename=operation.filename)
        return create_backup(
            actor=actor,
            description=backup.description,
            database=backup.database,
            trigger=backup.trigger,
            backup=backup,
            operation=operation,
        )
    progress = RestoreProgressFile(job_id, rebuilds_catalog=operation.action == Action.RESTORE)
    try:
        return RESTORES[operation.action](
            operation.filename,
            actor=actor,
            target=operation.database,
            operation=operation,
            progress=progress.replayed,
            stage=progress.stage,
            **operation.details["arguments"],
        )
    finally:
        progress.finish()


def progress_path(job_id):
    return backup_settings.JOB_LOG.parent / "progress" / f"{job_id}.json"


class RestoreProgressFile:
    """A restore's phase and bytes, for whoever watches it, in a small file next to the job log
    rather than in the journal: the journal, and the sessions of the people watching, may be in
    the very database being restored, whose tables psql keeps locked until it commits.
    Best effort: a file that cannot be written never stops a restore."""

    def __init__(self, job_id, rebuilds_catalog=True):
        self.path = progress_path(job_id)
        self.rebuilds_catalog = rebuilds_catalog
        self.state = {"phase": "checking", "started": time.time()}

    def stage(self, phase, backup=None):
        self.state = {"phase": phase, "started": time.time(), "backup": backup.filename if backup else None}
        self.write()

    def replayed(self, read, total, elapsed, final):
        # After the last byte a whole restore carries the catalog across and synchronises it; a
        # copy or a model restore does not (the latter names its next phases itself).
        phase = "catalog" if final and self.rebuilds_catalog else "loading"
        self.state.update(phase=phase, read=read, total=total, elapsed=elapsed)
        self.write()

    def finish(self):
        self.state = {"phase": "finished"}
        self.write()

    def write(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            partial.write_text(json.dumps(self.state))
            os.replace(partial, self.path)  # readers never see half a file
        except OSError:
            logger.debug("Could not record the progress of job %s", self.path.stem, exc_info=True)


def read_restore_progress(job_id):
    """What the restore ``job_id``'s worker last recorded ({} before it has begun); touches no
    database, so it answers while the restore holds the tables."""
    try:
        return json.loads(progress_path(job_id).read_text())
    except (OSError, ValueError):
        return {}


def forget_restore_progress(job_id):
    """Once the journal holds the outcome, the file has served its purpose."""
    progress_path(job_id).unlink(missing_ok=True)


def get_restore(job_id, *, actor):
    """A restore's journal row (of any kind: whole, copy, models), which is how an asynchronous
    restore is polled; one whose worker died is failed."""
    actor.require("view_backup")
    try:
        pk = uuid.UUID(str(job_id))
    except ValueError:
        raise BackupNotFound(f"No restore with the id {job_id}.") from None
    restores = Operation.objects.filter(pk=pk, action__in=tuple(RESTORES))
    operation = restores.first()
    if operation is None and wait_for_journal_restore():
        operation = restores.first()
    if operation is None:
        raise BackupNotFound(f"No restore with the id {job_id}.")
    if operation.status in (OperationStatus.PENDING, OperationStatus.RUNNING):
        now = timezone.now()
        if operation_interrupted(operation, now):
            mark_operation_interrupted(operation, now)
    return operation


def wait_for_journal_restore():
    """When the journal's own database is being restored, its rows are the dump's from psql's
    commit until the restore puts the carried rows back, which it does before releasing its
    lock: wait for that lock (briefly), so that a poll in between does not get a false 404.
    Returns True when there was a restore to wait for."""
    try:
        engine = get_engine(router.db_for_read(Operation))
    except BackupError:
        return False  # a database the backups app cannot restore either
    deadline = time.monotonic() + JOURNAL_RESTORE_WAIT
    waited = False
    while time.monotonic() < deadline:
        try:
            with engine.lock(exclusive=False):
                return waited
        except OperationInProgress:
            waited = True
            time.sleep(0.1)
    return waited
