"""The functions django-crontab runs (see CRONJOBS in the site's settings). Thin: the service
logs and records each outcome itself, since django-crontab swallows exceptions and exits 0."""

from .services.schedule import run_scheduled_backups, run_scheduled_cleanup
from .services.verification import run_scheduled_verification


def scheduled_backup():
    run_scheduled_backups()


def scheduled_cleanup():
    run_scheduled_cleanup()


def scheduled_verification():
    run_scheduled_verification()
