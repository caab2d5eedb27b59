"""The catalog of backups and the journal of operations.

None has a foreign key to ``auth_user``: a restore rewrites every table, and these rows (the
catalog, the journal and the health state) must survive it; the service carries them across
every restore of their own database.
"""

import functools
import uuid
from importlib import import_module

from django.db import models
from django.utils import timezone


class Trigger(models.TextChoices):
    MANUAL = "manual", "manual"
    SCHEDULED = "scheduled", "scheduled"
    PRE_RESTORE = "pre-restore", "pre-restore"
    PRE_MIGRATE = "pre-migrate", "pre-migrate"


class Origin(models.TextChoices):
    API = "api", "API"
    ADMIN = "admin", "admin"
    COMMAND = "command", "command"
    CRON = "cron", "cron"


class BackupStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    MISSING = "missing", "missing"


class BackupQuerySet(models.QuerySet):
    def restorable(self):
        return self.filter(status=BackupStatus.SUCCEEDED)

    def for_database(self, alias):
        return self.filter(database=alias)

    def newest(self):
        """The newest backup here that can be restored, or None."""
        return self.restorable().defer("manifest").order_by("-created_at").first()


@functools.cache
def vendor_of(engine):
    """Django's vendor name ("postgresql", "mysql", "sqlite") of a database ENGINE setting;
    cached, since a list of 10,000 backups asks for each."""
    return import_module(f"{engine}.base").DatabaseWrapper.vendor


class BackupFigures:
    """What is derived from a backup's columns: shared by the model and by ``BackupRow``."""

    #: The columns these figures are computed from.
    COLUMNS = ("filename", "created_at", "finished_at", "progress_at", "bytes_written", "database", "engine")

    @property
    def encrypted(self):
        return self.filename.endswith(".age")

    @property
    def engine_matches_database(self):
        """Whether its database alias still uses the engine it was taken from: a site moved from
        SQLite to PostgreSQL keeps its old backups, and they cannot be restored into it."""
        from django.db import connections

        configured = connections.settings.get(self.database)
        return configured is not None and vendor_of(configured["ENGINE"]) == self.engine

    @property
    def timestamp(self):
        """The spec's compact UTC timestamp, YYYYMMDD_HHMMSS."""
        return self.created_at.strftime("%Y%m%d_%H%M%S")

    @property
    def duration_seconds(self):
        if self.finished_at is None:
            return None
        return (self.finished_at - self.created_at).total_seconds()

    @property
    def elapsed_seconds(self):
        """Seconds since the backup was started, up to its end once it has ended."""
        return ((self.finished_at or timezone.now()) - self.created_at).total_seconds()

    @property
    def bytes_per_second(self):
        """The average rate at which the file was written, once some of it was."""
        until = self.finished_at or self.progress_at
        if not self.bytes_written or until is None or until <= self.created_at:
            return None
        return self.bytes_written / (until - self.created_at).total_seconds()


class Backup(BackupFigures, models.Model):
    """One backup attempt: a row per file in storage, plus failed and running attempts."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    filename = models.CharField(max_length=255, unique=True)
    database = models.CharField("database alias", max_length=64, default="default")
    engine = models.CharField(max_length=32)
    database_name = models.CharField(max_length=255)
    database_host = models.CharField(max_length=255, blank=True)
    description = models.TextField(max_length=500, blank=True)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.COMMAND)
    created_by = models.CharField(max_length=150, blank=True)
    status = models.CharField(max_length=16, choices=BackupStatus.choices, default=BackupStatus.PENDING)
    created_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    uncompressed_bytes = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    # Progress of a running backup, updated about once a second by the process doing it.
    bytes_written = models.BigIntegerField(default=0)
    progress_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, help_text="host:pid of the process writing it")
    manifest = models.JSONField(default=dict, blank=True)
    # The latest verification: {"level", "passed", "checked_at", "message", "details"}.
    verified_at = models.DateTimeField(null=True, blank=True)
    verification = models.JSONField(null=True, blank=True)
    # Where verified copies live: "primary" (the backup storage) and "offsite" (the second one).
    locations = models.JSONField(default=list, blank=True)
    offsite_error = models.TextField(blank=True, help_text="Why the off-site copy failed, until it succeeds")

    objects = BackupQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-filename"]
        indexes = [models.Index(fields=["database", "status", "created_at"])]
        permissions = [
            ("restore_backup", "Can restore the database from a backup"),
            ("download_backup", "Can download backup files"),
            ("verify_backup", "Can verify backups (checksums and restore drills)"),
            ("restore_copy", "Can restore a backup into a new database (a copy) and drop copies"),
            ("restore_models", "Can restore chosen models' tables from a backup"),
        ]

    def __str__(self):
        return self.filename

    # The schema as the manifest recorded it (services.migrations.migration_state).
    @property
    def migrations(self):
        return (self.manifest or {}).get("migrations")

    @property
    def django_version(self):
        return (self.manifest or {}).get("django_version", "")

    @property
    def app_version(self):
        return (self.manifest or {}).get("app_version", "")

    def mark_failed(self, reason):
        """Record that this attempt failed, and why."""
        self.status = BackupStatus.FAILED
        self.error = reason
        self.finished_at = timezone.now()
        self.save()


class BackupRow(BackupFigures):
    """A catalog row as ``values()`` reads it, with its columns and figures as attributes:
    listing thousands of backups this way costs a fraction of building models."""

    def __init__(self, values):
        self.__dict__.update(values)


class OperationStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    SKIPPED = "skipped", "skipped"


class Action(models.TextChoices):
    CREATE = "create", "create"
    RESTORE = "restore", "restore"
    DELETE = "delete", "delete"
    CLEANUP = "cleanup", "cleanup"
    SYNC = "sync", "sync"
    VERIFY = "verify", "verify"
    RESTORE_COPY = "restore-copy", "restore as a copy"
    DROP_COPY = "drop-copy", "drop a copy"
    RESTORE_MODELS = "restore-models", "restore chosen models"
    UNDELETE = "undelete", "undelete chosen objects"


class Operation(models.Model):
    """The audit trail: who did what, when, from where, and how it ended.

    Restores are also jobs: an asynchronous restore is polled through its operation row.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    action = models.CharField(max_length=16, choices=Action.choices)
    status = models.CharField(max_length=16, choices=OperationStatus.choices, default=OperationStatus.RUNNING)
    filename = models.CharField(max_length=255, blank=True)
    database = models.CharField("database alias", max_length=64, blank=True)
    actor = models.CharField(max_length=150, blank=True)
    origin = models.CharField(max_length=16, choices=Origin.choices)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    started_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    message = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at"]
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"

    def __str__(self):
        return f"{self.action} {self.filename or self.database} ({self.status})"

    @property
    def elapsed_seconds(self):
        """Seconds since it was asked for, up to its end once it has ended."""
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()


# What puts a backup's data somewhere: over the whole database, into a new one, over chosen
# tables, or beside the rows there (missing ones only).
RESTORE_ACTIONS = (Action.RESTORE, Action.RESTORE_COPY, Action.RESTORE_MODELS, Action.UNDELETE)


class RestoreHistoryManager(models.Manager):
    def get_queryset(self):
        return super().get_queryset().filter(action__in=RESTORE_ACTIONS)


class RestoreHistory(Operation):
    """The restores of every kind among the operations, for the admin's read-only history."""

    objects = RestoreHistoryManager()

    class Meta:
        proxy = True
        verbose_name = "restore"
        verbose_name_plural = "restore history"


class HealthState(models.Model):
    """Whether the backups were healthy when last checked, so that a change of state is
    announced once, not at every check. A single row."""

    healthy = models.BooleanField(default=True)
    changed_at = models.DateTimeField()
    problems = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name = "backup health"
        verbose_name_plural = "backup health"

    def __str__(self):
        return "healthy" if self.healthy else "unhealthy"


class DatabaseCopy(models.Model):
    """A backup restored into a database of its own (never the live one), to look at old data.

    Like the catalog, carried across restores of the database that holds it, so that no copy
    is forgotten (and left on the server) because a restore rewound this table.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255, help_text="The copy's database name (SQLite: its file)")
    database = models.CharField("server alias", max_length=64, help_text="The alias on whose server it lives")
    engine = models.CharField(max_length=32)
    host = models.CharField(max_length=255, blank=True)
    filename = models.CharField("backup", max_length=255)
    created_at = models.DateTimeField()
    created_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["engine", "host", "name"], name="backups_copy_unique_name")]
        verbose_name = "database copy"
        verbose_name_plural = "database copies"

    def __str__(self):
        return self.name
