"""The backup service: every operation lives here, once. API, admin, commands and cron jobs
only call these functions and present their results."""

from .backups import (
    create_backup,
    delete_backup,
    describe_database,
    get_backup,
    list_backups,
    newest_backups,
    open_backup,
    update_description,
)
from .catalog import sync_catalog, unlisted_manifests
from .copies import copy_locations
from .database_copies import drop_copy, list_copies, restore_copy
from .health import catalog_down_report, check_health, health_for
from .jobs import forget_restore_progress, get_restore, run_job, start_backup, start_restore
from .journal import Actor
from .model_restore import chosen_models, model_restore_preview, restorable_models, restore_models
from .overview import overview
from .premigrate import migrate_with_backup
from .progress import backup_progress, restore_progress
from .restore import restore_backup, restore_kind, restore_preview, verification_warning
from .retention import cleanup_backups
from .schedule import schedule_status
from .undelete import undelete
from .verification import verification_history, verify_backup

__all__ = [
    "Actor",
    "catalog_down_report",
    "check_health",
    "health_for",
    "cleanup_backups",
    "copy_locations",
    "create_backup",
    "delete_backup",
    "drop_copy",
    "forget_restore_progress",
    "list_copies",
    "restore_copy",
    "restore_models",
    "model_restore_preview",
    "chosen_models",
    "restorable_models",
    "describe_database",
    "get_backup",
    "get_restore",
    "list_backups",
    "migrate_with_backup",
    "newest_backups",
    "open_backup",
    "overview",
    "backup_progress",
    "restore_backup",
    "restore_kind",
    "restore_progress",
    "restore_preview",
    "run_job",
    "schedule_status",
    "start_backup",
    "start_restore",
    "sync_catalog",
    "undelete",
    "unlisted_manifests",
    "update_description",
    "verification_history",
    "verification_warning",
    "verify_backup",
]
