"""How far a running backup or restore job has got: phase, bytes, rate and time left, for the
pages that watch one. Reads what the workers record (``jobs.RestoreProgressFile`` and the
catalog row a backup updates about once a second); the caller has checked who may watch."""

import time
from dataclasses import dataclass

from ..models import Backup, BackupStatus
from .jobs import read_restore_progress


@dataclass
class JobProgress:
    # "waiting", "checking", "pre-restore backup", "loading", "catalog", "copying rows" (chosen models),
    # "dumping", "finished"
    phase: str
    done: int | None = None  # bytes so far
    total: int | None = None  # bytes expected, when known or estimated
    elapsed: float | None = None  # seconds in this phase
    estimated: bool = False  # ``total`` is the previous backup's size, not a fact

    @property
    def finished(self):
        return self.phase == "finished"

    @property
    def rate(self):
        if not self.done or not self.elapsed:
            return None
        return self.done / self.elapsed

    @property
    def fraction(self):
        if not self.total or self.done is None:
            return None
        return min(self.done / self.total, 1.0)

    @property
    def seconds_left(self):
        if self.fraction is None or not self.rate:
            return None
        return max(self.total - self.done, 0) / self.rate


def restore_progress(job_id):
    """The progress of the restore ``job_id``. Outside the pre-restore backup it touches no
    database: while the dump loads, the tables it replaces are locked."""
    state = read_restore_progress(job_id)
    phase = state.get("phase", "waiting")
    if phase == "pre-restore backup" and state.get("backup"):
        backup = Backup.objects.filter(filename=state["backup"]).defer("manifest").first()
        if backup is not None:
            return dump_progress(backup, phase)
    if phase in ("loading", "catalog"):
        return JobProgress(phase, done=state.get("read"), total=state.get("total"), elapsed=state.get("elapsed"))
    started = state.get("started")
    return JobProgress(phase, elapsed=time.time() - started if started else None)


def backup_progress(backup):
    """The progress of the backup being written into ``backup``'s catalog row."""
    if backup.status not in (BackupStatus.PENDING, BackupStatus.RUNNING):
        return JobProgress("finished", done=backup.size_bytes, elapsed=backup.duration_seconds)
    return dump_progress(backup, "dumping" if backup.status == BackupStatus.RUNNING else "waiting")


def dump_progress(backup, phase):
    """Bytes written into ``backup`` so far; its size is estimated from the previous backup of
    the same database."""
    previous = (
        Backup.objects.restorable()
        .for_database(backup.database)
        .filter(created_at__lt=backup.created_at)
        .order_by("-created_at")
        .values_list("size_bytes", flat=True)
        .first()
    )
    return JobProgress(
        phase,
        done=backup.bytes_written,
        total=previous,
        elapsed=backup.elapsed_seconds,
        estimated=previous is not None,
    )
