"""django-crontab's ``crontab`` command, checked: ``add`` runs the system checks (a bad schedule
is refused by name) and verifies that the jobs really are in the crontab (django-crontab itself
reports success even without a crontab binary), then logs "Backup scheduler started".

``run``, which cron calls, runs no system checks: a failing check would end the job before the
service could record and announce the failure, which is what a scheduled job is for."""

import logging
import subprocess

from django.conf import settings
from django.core.management.base import CommandError
from django_crontab.management.commands.crontab import Command as CrontabCommand

logger = logging.getLogger("backups")


class Command(CrontabCommand):
    requires_system_checks = []

    def handle(self, *args, **options):
        if options["subcommand"] == "add":
            self.check()
        super().handle(*args, **options)
        if options["subcommand"] != "add":
            return
        jobs = getattr(settings, "CRONJOBS", [])
        if not jobs:
            logger.warning("Backup scheduler not started: BACKUP_ENABLED is false, so no jobs were installed")
            return
        executable = getattr(settings, "CRONTAB_EXECUTABLE", "/usr/bin/crontab")
        try:
            listed = subprocess.run([executable, "-l"], capture_output=True, text=True).stdout
        except OSError as exc:
            raise CommandError(f"Cannot run {executable}: {exc.strerror}. Is cron installed?") from None
        comment = getattr(settings, "CRONTAB_COMMENT", "")
        installed = sum(1 for line in listed.splitlines() if "crontab run" in line and line.endswith(comment))
        if installed < len(jobs):
            raise CommandError(
                f"The backup jobs are not in the crontab ({installed} of {len(jobs)} found). Is cron installed "
                f"and {executable} usable by this user?"
            )
        logger.info(
            "Backup scheduler started: %s", "; ".join(f"{function} at '{expression}'" for expression, function in jobs)
        )
