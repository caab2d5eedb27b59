"""``manage.py backups SUBCOMMAND``: thin. Parse, call the service, print, exit."""

import argparse
import json
import logging
import sys
import uuid
from contextlib import contextmanager
from datetime import datetime

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from ... import checks, services
from ...conf import backup_settings
from ...exceptions import BackupError, catalog_error
from ...formatting import TerminalProgress, human_duration, human_size, local_time, verification_label
from ...models import Action
from ...services.migrations import refuse_ahead
from ...services.verification import LEVELS


def one_line(message):
    """Tools write several lines of stderr; a failed command prints exactly one."""
    return " / ".join(line.strip() for line in message.splitlines() if line.strip())


@contextmanager
def quiet_console_logging(verbosity):
    """The service logs each operation; on a terminal the command's own output says it all, so
    console log handlers stay silent unless -v 2 is given. Log files and the journal still
    record everything."""
    logger = logging.getLogger("backups")
    consoles = [
        handler
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout)
    ]
    levels = [handler.level for handler in consoles]
    if verbosity < 2:
        for handler in consoles:
            handler.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for handler, level in zip(consoles, levels, strict=True):
            handler.setLevel(level)


# The settings each subcommand reads (without the BACKUP_ prefix) and the checks it needs. Only
# these are checked before it runs: a typo in the schedule must not stop a restore, nor a bad
# retention a download. What a subcommand reads but cannot be checked here still fails when
# used, naming the variable.
STORAGE = ("DIR", "STORAGE_URL", "DESTINATIONS")
WRITING = (*STORAGE, "FILENAME_PREFIX", "COMPRESSION", "COMPRESSION_THREADS", "ENCRYPTION_RECIPIENTS")
READING = (*STORAGE, "ENCRYPTION_IDENTITY_FILE")
SCHEDULING = ("ENABLED", "DATABASES", "SCHEDULE", "CLEANUP_SCHEDULE", "VERIFY_SCHEDULE")
RETENTION = ("RETENTION_DAYS", "RETENTION_MIN_COUNT", "KEEP_DAILY", "KEEP_WEEKLY", "KEEP_MONTHLY")
RESTORING = (*WRITING, *READING, "RESTORE_LOCK_TIMEOUT", "PRE_RESTORE_BACKUP")
NEEDS = {
    "create": ((*WRITING, "OFFSITE_STORAGE_URL"), (checks.check_storage, checks.check_tools)),
    "list": ((), ()),
    "show": ((), ()),
    "restore": (RESTORING, (checks.check_storage, checks.check_tools, checks.check_identity_file)),
    "delete": ((*STORAGE, "OFFSITE_STORAGE_URL"), ()),
    "cleanup": ((*STORAGE, *RETENTION, "OFFSITE_STORAGE_URL"), ()),
    "sync": ((*WRITING, "OFFSITE_STORAGE_URL"), (checks.check_storage, checks.check_offsite_storage)),
    "schedule": ((*SCHEDULING, *RETENTION), ()),
    "verify": (
        (*READING, "RESTORE_LOCK_TIMEOUT", "VERIFY_DATABASE_URL"),
        (checks.check_tools, checks.check_identity_file, checks.check_drills),
    ),
    "health": (("ENABLED", "DATABASES", "MAX_AGE_HOURS"), ()),
    "job": ((*RESTORING, "OFFSITE_STORAGE_URL"), (checks.check_storage, checks.check_tools)),
    # An undelete reads a backup into a scratch database, as a restore drill does, and writes no backup.
    "undelete": (
        (*READING, "RESTORE_LOCK_TIMEOUT", "VERIFY_DATABASE_URL"),
        (checks.check_storage, checks.check_tools, checks.check_identity_file, checks.check_drills),
    ),
    "copies": ((), ()),
    "drop-copy": ((), ()),
    # The pre-migrate backup is a backup like any other.
    "migrate": ((*WRITING, "OFFSITE_STORAGE_URL"), (checks.check_storage, checks.check_tools)),
}


def objects_argument(value):
    """``app.Model:PK,PK,...`` as (label, [PK, ...])."""
    label, _, keys = value.partition(":")
    pks = [key.strip() for key in keys.split(",") if key.strip()]
    if not label.strip() or not pks:
        raise argparse.ArgumentTypeError(f"expected app.Model:PK,PK,... (e.g. recipes.Recipe:1,2), not {value!r}")
    return label.strip(), pks


def engine_label(backup):
    if backup.engine_matches_database:
        return backup.engine
    return f"{backup.engine} (not this database's)"


def unlisted_hint():
    """When the catalog is empty but the storage is not (the site moved to another database,
    whose catalog starts empty), where the backups went and how to list them again."""
    try:
        count, storage = services.unlisted_manifests()
    except BackupError:
        return ""
    if not count:
        return ""
    return (
        f" But {storage.named()} holds {count} backup manifest{'s' if count != 1 else ''} the catalog does not list "
        "(made with another database, say): run 'manage.py backups sync' to add them."
    )


def verification_words(facts):
    """The latest verification as health saw it, saying which backup it was of when that is not
    the newest one: a pass on an older file says nothing about the newest."""
    check = facts["verification"]
    if not check:
        return "; never verified"
    outcome = "passed" if check["passed"] else "FAILED"
    if check["checked_filename"] == facts["newest_backup_filename"]:
        return f"; its last verification {outcome}"
    return f"; not verified yet (the last verification, of the older {check['checked_filename']}, {outcome})"


class Command(BaseCommand):
    help = "Create, list, restore, delete and clean up database backups."
    # Not the site's system checks, nor all of the app's: each subcommand runs those it needs
    # (NEEDS), before it starts.
    requires_system_checks = []

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        create = commands.add_parser("create", help="Back up a database now.")
        create.add_argument("--description", default="", help="A note stored with the backup.")
        create.add_argument("--database", default="default", help="Database alias (default: default).")

        listing = commands.add_parser("list", help="List the backups that can be restored, newest first.")
        listing.add_argument("--json", dest="as_json", action="store_true", help="Print JSON, as the API answers.")
        listing.add_argument("--database", help="Only backups of this database alias.")

        show = commands.add_parser("show", help="Show one backup's details.")
        show.add_argument("filename")

        restore = commands.add_parser("restore", help="Replace the database's content with a backup.")
        restore.add_argument("filename")
        restore.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
        restore.add_argument("--database", dest="target", help="Restore into this alias instead (same engine).")
        restore.add_argument(
            "--no-pre-restore-backup",
            dest="pre_restore_backup",
            action="store_false",
            default=None,
            help="Skip the backup of the current state that is taken first.",
        )
        restore.add_argument(
            "--force-ahead",
            action="store_true",
            help="Restore even a backup that holds migrations this code does not know (from a newer release).",
        )
        restore.add_argument(
            "--no-migrate",
            dest="migrate",
            action="store_false",
            default=None,
            help="Do not run migrate afterwards, even when the backup is behind the code's migrations.",
        )

        restore.add_argument(
            "--into",
            metavar="NAME",
            help="Restore as a copy, into the new database NAME (SQLite: NAME.sqlite3 next to the live file) on "
            "the server of the backup's alias (or of --database); the live database is not touched.",
        )
        restore.add_argument(
            "--models",
            type=lambda value: [label.strip() for label in value.split(",") if label.strip()],
            help="Replace only these models' rows, e.g. recipes.Recipe,recipes.Ingredient (or an app: recipes).",
        )
        restore.add_argument(
            "--include-related",
            action="store_true",
            help="With --models: also restore the models whose foreign keys would otherwise point nowhere.",
        )

        undelete = commands.add_parser(
            "undelete",
            help="Bring back deleted objects, and the objects that depended on them, from a backup: only the rows "
            "missing from the database are inserted.",
        )
        undelete.add_argument("filename")
        undelete.add_argument(
            "--objects",
            action="append",
            required=True,
            type=objects_argument,
            metavar="app.Model:PK,PK",
            help="The objects to bring back, e.g. recipes.Recipe:1,2,3; repeat it for objects of other models.",
        )
        undelete.add_argument(
            "--dry-run", action="store_true", help="Only list what would be inserted and the conflicts."
        )
        undelete.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
        undelete.add_argument(
            "--database", dest="target", metavar="ALIAS", help="Undelete into this alias instead (same engine)."
        )

        commands.add_parser("copies", help="List the copies made by 'restore --into'.")
        drop_copy = commands.add_parser("drop-copy", help="Drop a copy's database.")
        drop_copy.add_argument("name", help="The copy's name (as given to --into) or id.")
        drop_copy.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

        migrate = commands.add_parser(
            "migrate", help="Back up the database (trigger pre-migrate) when migrations are pending, then migrate."
        )
        migrate.add_argument("--database", default="default", help="Database alias (default: default).")
        migrate.add_argument(
            "--noinput", "--no-input", action="store_true", help="Accepted as migrate accepts it; nothing is asked."
        )

        delete = commands.add_parser("delete", help="Delete a backup, its file and its manifest.")
        delete.add_argument("filename")
        delete.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

        cleanup = commands.add_parser("cleanup", help="Delete backups past the retention period.")
        cleanup.add_argument("--dry-run", action="store_true", help="Only report what would be deleted.")

        commands.add_parser("sync", help="Rebuild the catalog from the manifests in storage.")
        commands.add_parser("schedule", help="Show the schedule, the next runs and the last scheduled backup.")

        verify = commands.add_parser("verify", help="Verify backups: checksum, or a restore drill.")
        which = verify.add_mutually_exclusive_group(required=True)
        which.add_argument("filename", nargs="?", help="The backup to verify.")
        which.add_argument("--latest", action="store_true", help="The newest backup of each database.")
        which.add_argument("--all", action="store_true", help="Every backup that can be restored.")
        verify.add_argument(
            "--level",
            choices=LEVELS,
            default="checksum",
            help="checksum (default): sha256 and decompression; restore: a drill into a scratch database.",
        )

        commands.add_parser("health", help="Check that backups are recent and verified; exit 1 if not.")

        job = commands.add_parser("job", help="Run a backup or restore queued by an asynchronous API request.")
        job.add_argument("job_id", type=uuid.UUID, help="The queued operation's id (the API starts this itself).")

    def handle(self, *args, subcommand, **options):
        self.actor = services.Actor.command()
        self.check_needs(subcommand)
        try:
            with quiet_console_logging(options["verbosity"]):
                getattr(self, "handle_" + subcommand.replace("-", "_"))(**options)
        except BackupError as exc:
            raise CommandError(one_line(exc.message)) from None
        except ImproperlyConfigured as exc:
            raise CommandError(one_line(f"Configuration error: {exc}")) from None
        except DatabaseError as exc:  # the site's database, which holds the catalog, is down
            raise CommandError(one_line(catalog_error(exc).message)) from None

    # -- subcommands -----------------------------------------------------------------------

    def handle_create(self, description, database, **options):
        with self.progress_bar("Backing up") as bar:
            report = None
            if bar is not None:

                def report(uncompressed, written, elapsed, final):
                    bar.show(uncompressed, elapsed, detail=f"dumped, {human_size(written)} written")

            backup = services.create_backup(
                actor=self.actor, description=description, database=database, progress=report
            )
        self.stdout.write(
            f"Created {backup.filename} ({human_size(backup.size_bytes)} in {human_duration(backup.duration_seconds)})"
        )
        if backup.offsite_error:
            self.stderr.write(f"Warning: {backup.offsite_error}")

    def handle_list(self, as_json, database, **options):
        backups = services.list_backups(actor=self.actor, database=database)
        if as_json:
            from ...api.serializers import BackupSummarySerializer  # DRF's serializers: 0.1 s to import

            self.write_json(BackupSummarySerializer(backups, many=True).data)
            return
        rows = [
            (
                backup.filename,
                local_time(backup.created_at),
                human_size(backup.size_bytes),
                backup.database,
                engine_label(backup),
                backup.trigger,
                "+".join(backup.locations) + (" (a copy failed)" if backup.offsite_error else ""),
                verification_label(backup),
                backup.description.replace("\n", " ")[:50],
            )
            for backup in backups
        ]
        if not rows:
            self.stdout.write("No backups." + unlisted_hint())
            return
        header = ("FILENAME", "CREATED", "SIZE", "DATABASE", "ENGINE", "TRIGGER", "COPIES", "VERIFIED", "DESCRIPTION")
        widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write(
                "  ".join(str(value).ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
            )

    def handle_show(self, filename, **options):
        from ...api.serializers import BackupSerializer  # DRF's serializers: 0.1 s to import

        backup = services.get_backup(filename, actor=self.actor)
        data = dict(BackupSerializer(backup).data)
        data["size"] = human_size(backup.size_bytes)
        self.write_json(data)

    def handle_restore(self, filename, yes, target, pre_restore_backup, force_ahead, migrate, into, models, **options):
        kind = services.restore_kind(filename, actor=self.actor, into=into, models=models)
        if kind == Action.RESTORE_COPY:
            return self.restore_copy(filename, into, target)
        if kind == Action.RESTORE_MODELS:
            return self.restore_models(filename, yes, target, pre_restore_backup, models, options["include_related"])
        preview = services.restore_preview(filename, actor=self.actor, target=target)
        database = preview.database
        warning = f" {preview.warning}" if preview.warning else ""
        refuse_ahead(preview.migrations, force_ahead)  # before asking: the answer would be no
        self.confirm(
            yes,
            f"This replaces ALL data in database '{database['alias']}' ({database['name']}) with the backup "
            f"{filename} taken {local_time(preview.backup.created_at)}.{warning} {preview.migrations.message}",
        )
        with self.progress_bar("Restoring") as bar:
            report = None
            if bar is not None:

                def report(read, total, elapsed, final):
                    bar.show(read, elapsed, total=total)

            result = services.restore_backup(
                filename,
                actor=self.actor,
                target=target,
                pre_restore_backup=pre_restore_backup,
                progress=report,
                force_ahead=force_ahead,
                migrate=migrate,
            )
        self.stdout.write(f"Restored database '{result.database}' from {filename}.")
        if result.migrations_applied:
            self.stdout.write(
                f"Then migrated: {len(result.migrations_applied)} migrations applied: "
                f"{', '.join(result.migrations_applied)}."
            )
        if result.undo_database:
            self.stdout.write(
                f"Restored beside the live database and switched; the replaced one is kept as "
                f"{result.undo_database} for {backup_settings.RESTORE_KEEP_OLD_HOURS} h."
            )
        if result.pre_restore_backup:
            self.stdout.write(f"To undo, restore {result.pre_restore_backup.filename} (taken just before).")
        for warning in result.warnings:
            self.stderr.write(f"Warning: {warning}")

    def restore_copy(self, filename, into, target):
        result = services.restore_copy(filename, actor=self.actor, into=into, target=target)
        self.stdout.write(
            f"Restored {filename} into the new database {result.copy.name}; the live one was not touched."
        )
        for warning in result.warnings:
            self.stderr.write(f"Warning: {warning}")

    def restore_models(self, filename, yes, target, pre_restore_backup, models, include_related):
        preview = services.restore_preview(filename, actor=self.actor, target=target, kind=Action.RESTORE_MODELS)
        self.confirm(
            yes,
            f"This replaces all rows of {', '.join(models)} (and their many-to-many tables) in database "
            f"'{preview.database['alias']}' with those of the backup {filename} taken "
            f"{local_time(preview.backup.created_at)}; other tables are left alone.",
        )
        result = services.restore_models(
            filename,
            actor=self.actor,
            models=models,
            include_related=include_related,
            target=target,
            pre_restore_backup=pre_restore_backup,
        )
        rows = ", ".join(f"{table} {count}" for table, count in sorted(result.rows.items()))
        self.stdout.write(f"Restored the rows of {', '.join(result.models)} from {filename} ({rows}).")
        if result.pre_restore_backup:
            self.stdout.write(f"To undo, restore {result.pre_restore_backup.filename} (taken just before).")
        for warning in result.warnings:
            self.stderr.write(f"Warning: {warning}")

    def handle_undelete(self, filename, objects, dry_run, yes, target, **options):
        chosen = {}
        for label, pks in objects:
            chosen.setdefault(label, []).extend(pks)
        if not dry_run:
            preview = services.restore_preview(filename, actor=self.actor, target=target, kind=Action.RESTORE_MODELS)
            named = ", ".join(f"{label} {','.join(pks)}" for label, pks in chosen.items())
            self.confirm(
                yes,
                f"This inserts into database '{preview.database['alias']}' the rows of {named} and of the objects "
                f"that depended on them, from the backup {filename} taken {local_time(preview.backup.created_at)}, "
                "where they are missing; rows that are there are left as they are (--dry-run lists them first).",
            )
        result = services.undelete(filename, actor=self.actor, objects=chosen, target=target, dry_run=dry_run)
        verb = "Would insert" if dry_run else "Inserted"
        if result.inserted:
            self.stdout.write(f"{verb} into database '{result.database}' from {filename}:")
        else:
            self.stdout.write(f"Nothing to insert into database '{result.database}': every row is there already.")
        for label, pks in result.inserted.items():
            self.stdout.write(f"  {label}: {len(pks)} ({', '.join(map(str, pks))})")
        if result.unchanged:
            there = ", ".join(f"{label} {count}" for label, count in result.unchanged.items())
            self.stdout.write(f"There already, the same: {there}.")
        for conflict in result.conflicts:
            self.stdout.write(f"Conflict, not overwritten: {conflict}")
        if dry_run:
            self.stdout.write("Dry run: nothing was changed.")
        for warning in result.warnings:
            self.stderr.write(f"Warning: {warning}")

    def handle_copies(self, **options):
        copies = services.list_copies(actor=self.actor)
        if not copies:
            self.stdout.write("No copies.")
        for copy in copies:
            self.stdout.write(
                f"{copy.name}  {copy.engine}{' on ' + copy.host if copy.host else ''}  of '{copy.database}' from "
                f"{copy.filename}, {local_time(copy.created_at)} by {copy.created_by}"
            )

    def handle_drop_copy(self, name, yes, **options):
        self.confirm(yes, f"This drops the copy {name} and everything in it.")
        copy = services.drop_copy(name, actor=self.actor)
        self.stdout.write(f"Dropped the copy {copy.name}.")

    def handle_migrate(self, database, **options):
        result = services.migrate_with_backup(actor=self.actor, database=database)
        if result.backup is not None:
            self.stdout.write(f"Backed up '{database}' before migrating: {result.backup.filename}")
        elif result.skipped_backup:
            self.stdout.write(f"No backup before migrating: {result.skipped_backup}.")
        if result.applied:
            self.stdout.write(f"Applied {len(result.applied)} migrations: {', '.join(result.applied)}.")
        else:
            self.stdout.write(f"No migrations to apply to '{database}'; no backup taken.")

    def handle_delete(self, filename, yes, **options):
        services.get_backup(filename, actor=self.actor)
        self.confirm(yes, f"This deletes the backup {filename} and its manifest for good.")
        services.delete_backup(filename, actor=self.actor)
        self.stdout.write(f"Deleted {filename}.")

    def handle_cleanup(self, dry_run, **options):
        result = services.cleanup_backups(actor=self.actor, dry_run=dry_run)
        verb = "Would delete" if dry_run else "Deleted"
        for backup in result.deleted:
            self.stdout.write(f"{verb} {backup.filename} ({human_size(backup.size_bytes)})")
        for filename, reasons in sorted(result.kept.items()):
            self.stdout.write(f"Kept {filename}: {'; '.join(reasons)}")
        verb_drop = "Would drop" if dry_run else "Dropped"
        for alias, name in result.dropped_undo_databases:
            self.stdout.write(f"{verb_drop} {name}, the database a switch restore of {alias} replaced")
        for alias, name in result.dropped_interrupted_loads:
            self.stdout.write(f"{verb_drop} {name}, left beside {alias} by a switch restore that was interrupted")
        for alias, name in result.dropped_scratches:
            self.stdout.write(
                f"{verb_drop} {name}, a scratch database of {alias} that a killed drill or model restore left"
            )
        self.stdout.write(
            f"{verb} {len(result.deleted)} backups, {human_size(result.total_size_freed)} "
            f"(retention {result.retention_days} days)."
        )

    def handle_sync(self, **options):
        result = services.sync_catalog(actor=self.actor)
        self.stdout.write(f"Catalog synchronised: {result.summary}.")
        for filename in result.offsite_failed:
            self.stderr.write(f"Warning: {filename}: {services.get_backup(filename).offsite_error}")

    def handle_schedule(self, **options):
        status = services.schedule_status(actor=self.actor)
        state = "enabled" if status["enabled"] else "disabled (set BACKUP_ENABLED=true and run 'manage.py crontab add')"
        self.stdout.write(f"Scheduled backups: {state}")
        for name in ("backup", "cleanup", "verification"):
            job = status[name]
            if job is None:
                self.stdout.write(f"{name.capitalize():13} off")
                continue
            self.stdout.write(f"{name.capitalize():13} {job['schedule']}  ({job['description']}, {status['timezone']})")
            runs = ", ".join(datetime.fromisoformat(moment).strftime("%Y-%m-%d %H:%M") for moment in job["next_runs"])
            self.stdout.write(f"{'':13} next: {runs}")
        retention = status["retention"]
        extra = [
            f"{unit} {retention['keep_' + unit]}"
            for unit in ("daily", "weekly", "monthly")
            if retention["keep_" + unit]
        ]
        self.stdout.write(
            f"Retention: {retention['days']} days, the newest {retention['min_count']} always kept"
            + (f", keep {', '.join(extra)}" if extra else "")
        )
        self.stdout.write(f"Databases: {', '.join(status['databases'])}")
        last = status["last_scheduled_backup"]
        if last is None:
            self.stdout.write("Last scheduled backup: none yet")
        else:
            when = local_time(datetime.fromisoformat(last["created_at"]))
            line = f"Last scheduled backup: {last['filename']} at {when}: {last['status']}"
            self.stdout.write(line + (f" ({last['error']})" if last["error"] else ""))

    def handle_verify(self, filename, latest, all, level, **options):
        if filename:
            names = [filename]
        else:
            backups = services.newest_backups(actor=self.actor) if latest else services.list_backups(actor=self.actor)
            names = [backup.filename for backup in backups]
        failed = 0
        for name in names:
            result = services.verify_backup(name, actor=self.actor, level=level)
            self.stdout.write(f"{'PASSED' if result.passed else 'FAILED'}  {name}: {result.message}")
            failed += not result.passed
        if failed:
            raise CommandError(f"{failed} of {len(names)} backups failed verification.")
        if not names:
            self.stdout.write("No backups to verify.")

    def handle_health(self, **options):
        report = services.check_health()
        self.stdout.write(f"Backups are {'healthy' if report.healthy else 'UNHEALTHY'}.")
        for alias, facts in report.databases.items():
            newest = facts["newest_backup_filename"] or "none"
            age = f", {facts['age_hours']} hours old" if facts["age_hours"] is not None else ""
            self.stdout.write(f"  {alias}: newest backup {newest}{age}{verification_words(facts)}")
        for warning in report.warnings:
            self.stdout.write(f"  Warning: {warning}")
        if not report.healthy:
            raise CommandError(" ".join(report.problems))

    def handle_job(self, job_id, **options):
        services.run_job(job_id)
        self.stdout.write(f"Job {job_id} succeeded.")

    # -- helpers ---------------------------------------------------------------------------

    def check_needs(self, subcommand):
        """Refuse, in one line, when what the subcommand needs is misconfigured; warn about the rest."""
        variables, needed_checks = NEEDS[subcommand]
        problems = checks.for_work(variables, *needed_checks)
        errors = [problem for problem in problems if problem.is_serious()]
        for warning in problems:
            if warning not in errors:
                self.stderr.write(f"Warning: {warning.msg} ({warning.id})")
        if errors:
            raise CommandError(
                " ".join(f"{error.msg} ({error.id})" + (f" {error.hint}" if error.hint else "") for error in errors)
            )

    @contextmanager
    def progress_bar(self, label):
        """A progress line on stderr when it is a terminal; None in cron jobs and pipes, which
        get only the outcome."""
        if not self.stderr.isatty():
            yield None
            return
        bar = TerminalProgress(self.stderr, label)
        try:
            yield bar
        finally:
            bar.close()

    def confirm(self, yes, warning):
        """Ask before destroying anything; the default answer is No."""
        if yes:
            return
        if not sys.stdin.isatty():
            raise CommandError(f"{warning} Refusing without --yes, since there is nobody to ask.")
        self.stdout.write(warning)
        answer = input("Continue? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            raise CommandError("Cancelled; nothing was changed.")

    def write_json(self, data):
        self.stdout.write(json.dumps(data, indent=2, default=str))
