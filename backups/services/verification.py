"""Verifying backups: a backup nobody has restored is a hope, not a backup.

Two levels:
- ``checksum``: the stored file's sha256 and size match the manifest, and the whole stream
  decompresses.
- ``restore``: a restore drill. The backup is restored into a scratch database created for the
  drill (never the live one) and dropped afterwards; then the rows of every table are counted
  against the manifest (counted while the backup streamed), and the scratch database is dumped
  again and compared line by line with the backup, ignoring the lines every dump makes unique.

Drills take a per-database "verify" lock (one drill at a time) but not the lock that backups and
restores share: a drill never touches the live database, so it never holds up its restore.
"""

import io
import itertools
import logging
import re
import time
from dataclasses import dataclass, field

from django.utils import timezone

from ..compression import CHUNK_SIZE, codec_for
from ..conf import backup_settings
from ..engines import get_engine
from ..exceptions import BackupDamaged, BackupNotFound, InvalidRequest, OperationInProgress, RestoreFailed, reason_of
from ..models import Action, Backup, Operation, OperationStatus
from ..streams import ChunkStream, ReadableStream
from .backups import get_restorable_backup
from .copies import usable_manifest, write_manifest
from .health import check_health_quietly, drill_blocker
from .journal import Actor, journal
from .notify import notify
from .restore import GuardedReader, verified_copy_anywhere

logger = logging.getLogger("backups")

LEVELS = ("checksum", "restore")


@dataclass
class Verification:
    filename: str
    level: str
    passed: bool
    checked_at: object
    message: str
    details: dict = field(default_factory=dict)

    def as_dict(self):
        return {
            "level": self.level,
            "passed": self.passed,
            "checked_at": self.checked_at.isoformat(),
            "message": self.message,
            "details": self.details,
        }


class VerificationFailed(Exception):
    """The backup was read and found wanting (not: the check could not run)."""

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details


def verify_backup(filename, *, actor, level="checksum"):
    """Check one backup at ``level``; records and returns the outcome.

    A backup that fails is not an error of this call: the result says so (and people are told).
    Errors are for checks that could not run (no scratch database, a tool missing, a lock held).
    """
    if level not in LEVELS:
        raise InvalidRequest(f"Unknown verification level {level!r}; use {' or '.join(LEVELS)}.")
    with journal(Action.VERIFY, actor, filename=filename, permission="verify_backup") as operation:
        backup = get_restorable_backup(filename)
        operation.database = backup.database
        manifest = usable_manifest(filename)  # without the key the check cannot run: an error
        engine = get_engine(backup.database)
        started = time.monotonic()
        try:
            with engine.lock(exclusive=True, purpose="verify"):
                details = run_checks(engine, filename, manifest, level)
            result = Verification(filename, level, True, timezone.now(), f"{level} verification passed", details)
        except (VerificationFailed, BackupDamaged, BackupNotFound, RestoreFailed) as exc:
            details = getattr(exc, "details", {})
            result = Verification(filename, level, False, timezone.now(), finding(exc), details)
        result.details["duration_seconds"] = round(time.monotonic() - started, 3)
        record(backup, manifest, result)
        operation.message = result.message
        operation.details = {"level": level, "passed": result.passed}
        if not result.passed:
            operation.status = OperationStatus.FAILED
    if not result.passed:
        logger.error("Backup verification of %s failed: %s", filename, result.message)
        notify(
            f"Backup verification failed: {filename}",
            f"{level} verification of {filename} failed:\n{result.message}",
            outcome="failure",
        )
    return result


def verification_history(filename, limit=20):
    """The journal's verifications of ``filename``, newest first, for pages that have already
    checked that their reader may see backups."""
    return list(Operation.objects.filter(action=Action.VERIFY, filename=filename).order_by("-started_at")[:limit])


def run_checks(engine, filename, manifest, level):
    """The checks themselves; raise ``VerificationFailed`` (or a damaged-file error) on a finding.
    The copy checked is the one a restore would use: the first usable one, in destination order."""
    codec = codec_for(filename)
    warnings = []

    def sql():  # the whole stream, which must decompress to the size the manifest recorded
        return GuardedReader(codec.decompressor(source), filename, manifest.get("uncompressed_bytes"))

    with verified_copy_anywhere(filename, manifest, warnings) as source:  # sha256 and size first
        if level == "checksum":
            reader = sql()
            while reader.read(CHUNK_SIZE):
                pass
            return {"sha256": "matches", "uncompressed_bytes": reader.size, "warnings": warnings}
        with engine.scratch() as scratch:
            scratch.restore(sql(), backup_settings.RESTORE_LOCK_TIMEOUT)
            expected = scratch.recorded_rows(manifest.get("table_rows"))
            tables = compare_row_counts(expected, lambda table: scratch.count_rows(table, among=expected))
            source.seek(0)
            lines = compare_dumps(scratch, sql(), engine.volatile_prefixes, manifest)
            return {
                "sha256": "matches",
                "tables_checked": tables,
                "lines_compared": lines,
                "scratch_database": "dropped",
                "warnings": warnings,
            }


MISSING_ROLE = re.compile(r'role "[^"]+" does not exist')


def finding(exc):
    """What a failed check says. A restore's error speaks of the live database; a drill's
    never touches it, and a drill on another server may lack the roles the backup grants to."""
    if not isinstance(exc, RestoreFailed):
        return exc.message
    said = exc.message.removeprefix(RestoreFailed.default_message).strip()
    message = f"The backup could not be restored into the drill's scratch database: {said}"
    if MISSING_ROLE.search(said):
        message += (
            " The drill's server lacks a role that the backup's GRANTs name: create it there, or point "
            "BACKUP_VERIFY_DATABASE_URL at a server that has the site's roles."
        )
    return message


def compare_row_counts(expected, count):
    """Every table holds the rows the backup promised when it was made: ``count(table)`` says
    how many it holds."""
    if not expected:
        return 0
    for table, rows in sorted(expected.items()):
        try:
            found = count(table)
        except Exception as exc:
            raise VerificationFailed(f"Table {table} could not be read after the restore: {exc}", table=table) from None
        if found != rows:
            raise VerificationFailed(
                f"Table {table} has {found} rows after the restore; the backup recorded {rows}.",
                table=table,
                expected_rows=rows,
                found_rows=found,
            )
    return len(expected)


def compare_dumps(scratch, original, volatile_prefixes, manifest):
    """Dump the scratch database again and compare it with the backup, line by line."""
    with scratch.dump_as_made(manifest) as dump:
        redump = io.BufferedReader(ChunkStream(dump), CHUNK_SIZE)
        ours = scratch.comparable(
            line
            for line in io.BufferedReader(ReadableStream(original), CHUNK_SIZE)
            if not line.startswith(volatile_prefixes)
        )
        theirs = scratch.comparable(line for line in redump if not line.startswith(volatile_prefixes))
        number = 0
        for number, (expected, found) in enumerate(itertools.zip_longest(ours, theirs), start=1):
            if expected != found:
                raise VerificationFailed(
                    f"The restored database differs from the backup at line {number}: "
                    f"expected {_shown(expected)}, found {_shown(found)}.",
                    line=number,
                )
    return number


def _shown(line):
    if line is None:
        return "the end of the dump"
    text = line.decode("utf-8", "replace").rstrip("\n")
    return repr(text if len(text) <= 120 else text[:117] + "...")


def record(backup, manifest, result):
    """The outcome goes with the backup: in the catalog and in its manifest."""
    backup.verified_at = result.checked_at
    backup.verification = result.as_dict()
    backup.manifest = {**manifest, "verification": result.as_dict()}
    backup.save(update_fields=["verified_at", "verification", "manifest"])
    write_manifest(backup)


def run_scheduled_verification(now=None):
    """The drill job: a restore drill of the newest backup of each covered database, unless
    another host is drilling it or it has been verified since its backup was made."""
    logger.info("Running scheduled backup verification")
    results = []
    for alias in backup_settings.DATABASES:
        newest = Backup.objects.for_database(alias).newest()
        if newest is None:
            logger.info("Scheduled backup verification of %r skipped: no backup yet", alias)
            continue
        if newest.verification and newest.verification.get("level") == "restore":
            logger.info("Scheduled backup verification skipped: %s was already drilled", newest.filename)
            continue
        blocker = drill_blocker(alias)
        if blocker:  # said at start-up (backups.W005) and by health, not by a failure every day
            logger.warning("Scheduled restore drill of %r skipped: it cannot run: %s", alias, blocker)
            continue
        try:
            result = verify_backup(newest.filename, actor=Actor.cron(), level="restore")
        except OperationInProgress:
            logger.info("Scheduled backup verification of %r skipped: another drill is running", alias)
            continue
        except Exception as exc:
            message = reason_of(exc)
            logger.error("Scheduled backup verification failed: %s", message, exc_info=not hasattr(exc, "message"))
            notify(
                "Scheduled backup verification failed",
                f"The restore drill of {newest.filename} could not run: {message}",
                outcome="failure",
            )
            continue
        if result.passed:
            logger.info("Scheduled backup verification passed: %s", newest.filename)
            if backup_settings.NOTIFY_ON_SUCCESS:
                notify(
                    f"Scheduled restore drill passed: {alias}",
                    f"The restore drill of {newest.filename} passed.",
                    outcome="success",
                )
        results.append(result)
    check_health_quietly()
    return results
