"""``manage.py backups SUBCOMMAND``: thin. Parse, call the service, print, exit."""

import json
import logging
import sys
import uuid
from contextlib import contextmanager
from datetime import datetime

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from ... import services
from ...checks import TAG
from ...conf import backup_settings
from ...exceptions import BackupError
from ...formatting import TerminalProgress, human_duration, human_size, local_time, verification_label
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


class Command(BaseCommand):
    help = "Create, list, restore, delete and clean up database backups."
    # The backups app's own checks only: the site's would import its URLs, the admin and the API
    # schema, which a backup from cron never uses (0.1 to 0.3 s and 6 MB per run).
    requires_system_checks = [TAG]

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
        try:
            with quiet_console_logging(options["verbosity"]):
                getattr(self, "handle_" + subcommand)(**options)
        except BackupError as exc:
            raise CommandError(one_line(exc.message)) from None
        except ImproperlyConfigured as exc:
            raise CommandError(one_line(f"Configuration error: {exc}")) from None

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
            from ...api.serializers import BackupSummarySerializer

            self.write_json(BackupSummarySerializer(backups, many=True).data)
            return
        rows = [
            (
                backup.filename,
                local_time(backup.created_at),
                human_size(backup.size_bytes),
                backup.database,
                backup.trigger,
                "+".join(backup.locations) + (" (off-site copy failed)" if backup.offsite_error else ""),
                verification_label(backup),
                backup.description.replace("\n", " ")[:50],
            )
            for backup in backups
        ]
        if not rows:
            self.stdout.write("No backups.")
            return
        header = ("FILENAME", "CREATED", "SIZE", "DATABASE", "TRIGGER", "COPIES", "VERIFIED", "DESCRIPTION")
        widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write(
                "  ".join(str(value).ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
            )

    def handle_show(self, filename, **options):
        backup = services.get_backup(filename, actor=self.actor)
        from ...api.serializers import BackupSerializer

        data = dict(BackupSerializer(backup).data)
        data["size"] = human_size(backup.size_bytes)
        self.write_json(data)

    def handle_restore(self, filename, yes, target, pre_restore_backup, **options):
        preview = services.restore_preview(filename, actor=self.actor, target=target)
        database = preview.database
        warning = f" {preview.warning}" if preview.warning else ""
        self.confirm(
            yes,
            f"This replaces ALL data in database '{database['alias']}' ({database['name']}) with the backup "
            f"{filename} taken {local_time(preview.backup.created_at)}.{warning}",
        )
        with self.progress_bar("Restoring") as bar:
            report = None
            if bar is not None:

                def report(read, total, elapsed, final):
                    bar.show(read, elapsed, total=total)

            result = services.restore_backup(
                filename, actor=self.actor, target=target, pre_restore_backup=pre_restore_backup, progress=report
            )
        self.stdout.write(f"Restored database '{result.database}' from {filename}.")
        if result.undo_database:
            self.stdout.write(
                f"Restored beside the live database and switched; the replaced one is kept as "
                f"{result.undo_database} for {backup_settings.RESTORE_KEEP_OLD_HOURS} h."
            )
        if result.pre_restore_backup:
            self.stdout.write(f"To undo, restore {result.pre_restore_backup.filename} (taken just before).")
        for warning in result.warnings:
            self.stderr.write(f"Warning: {warning}")

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
        for alias, name in result.dropped_undo_databases:
            verb_undo = "Would drop" if dry_run else "Dropped"
            self.stdout.write(f"{verb_undo} {name}, the database a switch restore of {alias} replaced")
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
            check = facts["verification"]
            verified = f"; last verification {'passed' if check['passed'] else 'FAILED'}" if check else ""
            self.stdout.write(f"  {alias}: newest backup {newest}{age}{verified}")
        if not report.healthy:
            raise CommandError(" ".join(report.problems))

    def handle_job(self, job_id, **options):
        services.run_job(job_id)
        self.stdout.write(f"Job {job_id} succeeded.")

    # -- helpers ---------------------------------------------------------------------------

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
