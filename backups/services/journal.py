"""Who is acting, and the audit trail of what they did.

Every operation runs inside ``journal()``: a row in ``Operation`` and a log line when it starts
and when it ends, with the outcome. Entry points describe the caller with an ``Actor``; the
service checks the actor's permissions, so the same rules hold for the API, the admin and
anything else that reaches it.
"""

import getpass
import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError
from django.utils import timezone

from ..exceptions import UNEXPECTED, BackupError, PermissionDenied, catalog_error
from ..models import Operation, OperationStatus, Origin

logger = logging.getLogger("backups")

PERMISSION_WORDS = {
    "view_backup": "view backups",
    "add_backup": "create backups",
    "delete_backup": "delete backups",
    "restore_backup": "restore backups",
    "download_backup": "download backups",
    "verify_backup": "verify backups",
    "change_backup": "change backups",
    "restore_copy": "restore backups as copies",
    "restore_models": "restore chosen models or objects from backups",
}


def this_worker(pid=None):
    """How rows name the process working on them: host:pid (this process by default)."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


@dataclass(frozen=True)
class Actor:
    """The caller: a Django user from the API or admin, or the system (command line, cron).

    ``username`` names the person a worker process acts for: their permission was checked
    when they asked, and the journal records them rather than the worker.
    """

    origin: str
    user: Any = None
    client_address: str | None = None
    username: str | None = None

    @classmethod
    def for_request(cls, request, origin):
        """The person behind a web request (API or admin), and where it came from."""
        return cls(origin=origin, user=request.user, client_address=request.META.get("REMOTE_ADDR"))

    @classmethod
    def command(cls):
        return cls(origin=Origin.COMMAND)

    @classmethod
    def cron(cls):
        return cls(origin=Origin.CRON)

    @property
    def name(self):
        if self.username:
            return self.username
        if self.user is not None:
            return self.user.get_username()
        if self.origin == Origin.CRON:
            return "cron"
        try:
            return getpass.getuser()
        except Exception:
            return "system"

    def allowed(self, permission):
        """Whether the actor holds ``backups.<permission>``. Shell and cron callers have already
        proven who they are by running on the server, and a worker acting for ``username`` was
        started by the server after that person's permission was checked; web users must be
        active staff with the permission."""
        if self.user is None:
            return self.origin in (Origin.COMMAND, Origin.CRON) or self.username is not None
        return bool(self.user.is_active and self.user.is_staff and self.user.has_perm(f"backups.{permission}"))

    def require(self, permission):
        """Refuse unless the actor holds ``backups.<permission>``."""
        if not self.allowed(permission):
            words = PERMISSION_WORDS.get(permission, permission)
            raise PermissionDenied(f"You do not have permission to {words} (backups.{permission}).")


@contextmanager
def journal(action, actor, *, permission, filename="", database="", operation=None):
    """Check the actor's ``permission`` and record the operation: running now, then succeeded
    or failed with the reason. Refused attempts are recorded too: an audit trail shows who
    tried.

    The caller may set ``filename``, ``message``, ``details`` or ``status`` on the yielded row:
    skipped, or pending when it has handed the row to a worker process (``jobs.hand_over``),
    which then owns it. ``operation`` continues a row created earlier (that worker's job).
    """
    try:
        operation = start(action, actor, filename, database, operation)
    except DatabaseError as exc:
        # The site's database is down (or not migrated): nothing has started, and nothing can
        # be recorded. Say so, rather than let a driver's traceback through.
        error = catalog_error(exc)
        logger.error("Backup %s not started (%s via %s): %s", action, actor.name, actor.origin, error.message)
        raise error from None
    logger.info(
        "Backup %s started by %s via %s: %s", action, actor.name, actor.origin, operation.filename or database or "-"
    )
    try:
        actor.require(permission)
        yield operation
    except BackupError as exc:
        operation.details = {**operation.details, **exc.details}
        _finish(operation, OperationStatus.FAILED, exc.message)
        logger.error("Backup %s failed (%s via %s): %s", action, actor.name, actor.origin, exc.message)
        raise
    except DatabaseError as exc:
        error = catalog_error(exc)
        _finish(operation, OperationStatus.FAILED, error.message)
        logger.error("Backup %s failed (%s via %s): %s", action, actor.name, actor.origin, error.message)
        raise error from None
    except BaseException:
        _finish(operation, OperationStatus.FAILED, UNEXPECTED)
        logger.exception("Backup %s failed unexpectedly (%s via %s)", action, actor.name, actor.origin)
        raise
    if operation.status == OperationStatus.PENDING:
        logger.info("Backup %s queued (%s via %s): %s", action, actor.name, actor.origin, operation.filename or "-")
        return
    # A caller may mark an operation that ran to its end as skipped, or as failed (a backup
    # found wanting by verification); otherwise it succeeded.
    kept = (OperationStatus.SKIPPED, OperationStatus.FAILED)
    status = operation.status if operation.status in kept else OperationStatus.SUCCEEDED
    _finish(operation, status, operation.message)
    logger.info(
        "Backup %s %s (%s via %s): %s",
        action,
        status,
        actor.name,
        actor.origin,
        operation.filename or operation.message or "-",
    )


def start(action, actor, filename, database, operation):
    """The journal's row for an operation starting now: a new one, or ``operation`` resumed."""
    if operation is not None:
        operation.status = OperationStatus.RUNNING
        operation.save(update_fields=["status"])
        return operation
    return Operation.objects.create(
        action=action,
        filename=printable(filename, 255),
        database=printable(database, 64),
        actor=actor.name,
        origin=actor.origin,
        client_address=actor.client_address,
        started_at=timezone.now(),
        # Should this process die midway, sync can tell the operation will never finish.
        details={"worker": this_worker()},
    )


def printable(text, limit):
    """Caller-supplied text as it may be stored and logged: no control characters, bounded."""
    text = "".join(ch for ch in str(text) if ch.isprintable())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finish(operation, status, message):
    operation.status = status
    operation.message = message or ""
    operation.finished_at = timezone.now()
    # save() updates the row, or inserts it again when a restore has just rewritten the table.
    try:
        operation.save()
    except DatabaseError:
        # The journal must not hide the outcome it records: a restore that failed partway may
        # have left the very database that holds the journal without its tables, or the
        # database may have gone away meanwhile.
        logger.exception("Could not record the end of the %s operation", operation.action)
