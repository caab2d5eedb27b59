"""Request and response shapes of the REST API (the spec's contract, then extra fields)."""

from datetime import UTC, timedelta
from functools import partial
from operator import attrgetter

from django.core.validators import RegexValidator
from django.db import connections
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.functional import cached_property
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import Action, Backup, BackupRow
from ..naming import FILENAME_REGEX, MAX_LENGTH, NOT_A_FILENAME
from ..services.backups import DESCRIPTION_MAX_LENGTH
from ..services.database_copies import COPY_NAME
from ..services.verification import LEVELS

ZERO = timedelta(0)


# What restore_models takes: "app" or "app.Model" (the schema says so, which keeps NUL out).
MODEL_LABEL = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"


class StrictCharField(serializers.CharField):
    """A string and only a string: DRF would otherwise turn 123 or true into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class DescriptionField(StrictCharField):
    """Free text whose unprintable characters (NUL and lone surrogates included) the service
    drops rather than refuses, like every other control character."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            data = "".join(ch for ch in data if ch != "\x00" and not 0xD800 <= ord(ch) <= 0xDFFF)
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """JSON true or false only, not "yes" or 1."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class RequestSerializer(serializers.Serializer):
    """Rejects fields it does not know, so that a typo is an error rather than a silent default."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class DatabaseAliasField(serializers.ChoiceField):
    """A configured database alias; the choices are read when the serializer is built, so the
    API description lists the real ones."""

    def __init__(self, **kwargs):
        super().__init__(choices=list(connections), **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid_choice", input=data)
        return super().to_internal_value(data)


class AsyncRequestSerializer(RequestSerializer):
    # No docstring: the API description would show it on every request body that has the flag.

    def get_fields(self):
        # Added here because ``async`` is a Python keyword and cannot be a class attribute.
        fields = super().get_fields()
        fields["async"] = StrictBooleanField(
            required=False,
            default=False,
            help_text="Answer 202 at once and do the work in a background process; poll the Location header",
        )
        return fields


class CreateRequestSerializer(AsyncRequestSerializer):
    description = DescriptionField(
        required=False, allow_blank=True, max_length=DESCRIPTION_MAX_LENGTH, trim_whitespace=False, default=""
    )
    database = DatabaseAliasField(required=False, default="default", help_text="Database alias to back up")


class RestoreRequestSerializer(AsyncRequestSerializer):
    filename = StrictCharField(
        max_length=MAX_LENGTH,
        trim_whitespace=False,
        validators=[RegexValidator(FILENAME_REGEX, message=f"This is {NOT_A_FILENAME}")],
    )
    pre_restore_backup = StrictBooleanField(
        required=False, allow_null=True, default=None, help_text="Back up the current state first (default: on)"
    )
    target_database = DatabaseAliasField(
        required=False, allow_null=True, default=None, help_text="Restore into this alias instead (same engine)"
    )
    force_ahead = StrictBooleanField(
        required=False,
        default=False,
        help_text="Restore even a backup that holds migrations this code does not know (from a newer release)",
    )
    migrate = StrictBooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Run migrate afterwards when the backup is behind the code (default: BACKUP_MIGRATE_AFTER_RESTORE)",
    )
    into = StrictCharField(
        required=False,
        allow_null=True,
        default=None,
        min_length=1,
        max_length=63,
        validators=[RegexValidator(f"^{COPY_NAME.pattern}$", message="Letters, digits and '_', not first a digit.")],
        help_text="Restore as a copy into this new database (SQLite: NAME.sqlite3 next to the live file), on the "
        "server of target_database if given",
    )
    models = serializers.ListField(
        child=StrictCharField(
            min_length=1,
            max_length=200,
            validators=[RegexValidator(MODEL_LABEL, message='An app label or "app.Model".')],
        ),
        required=False,
        allow_null=True,
        default=None,
        min_length=1,
        help_text='Replace only these models\' rows, e.g. ["recipes.Recipe"] (or an app label); not with into',
    )
    include_related = StrictBooleanField(
        required=False, default=False, help_text="With models: also restore models whose foreign keys would dangle"
    )


PRIMARY_KEY_SCHEMA = {"oneOf": [{"type": "integer"}, {"type": "string", "minLength": 1}]}


@extend_schema_field(PRIMARY_KEY_SCHEMA)
class PrimaryKeyField(serializers.Field):
    """A primary key as JSON carries it: a whole number, or a string (a UUID, a code)."""

    default_error_messages = {"invalid": "Expected a whole number or a string."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | str) or data == "":
            self.fail("invalid")
        return data

    def to_representation(self, value):
        return value


@extend_schema_field(
    {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {"type": "array", "minItems": 1, "items": PRIMARY_KEY_SCHEMA},
    }
)
class ObjectsField(serializers.DictField):
    """{"app.Model": [primary keys]}: at least one model, each with at least one key."""

    def __init__(self, **kwargs):
        super().__init__(
            child=serializers.ListField(child=PrimaryKeyField(), min_length=1), allow_empty=False, **kwargs
        )


class UndeleteRequestSerializer(RequestSerializer):
    objects = ObjectsField(help_text='The objects to bring back, by model and primary key: {"recipes.Recipe": [1, 2]}')
    dry_run = StrictBooleanField(
        required=False, default=False, help_text="Only find out what would be inserted and what conflicts"
    )
    target_database = DatabaseAliasField(
        required=False, allow_null=True, default=None, help_text="Undelete into this alias instead (same engine)"
    )


class CleanupRequestSerializer(RequestSerializer):
    dry_run = StrictBooleanField(required=False, default=False)


class VerificationSerializer(serializers.Serializer):
    level = serializers.ChoiceField(choices=LEVELS)
    passed = serializers.BooleanField()
    checked_at = serializers.DateTimeField()
    message = serializers.CharField()
    details = serializers.DictField()


class VerifyRequestSerializer(RequestSerializer):
    level = serializers.ChoiceField(
        choices=LEVELS,
        default="checksum",
        help_text="checksum: sha256 and decompression; restore: a restore drill into a scratch database",
    )


class VerifyResponseSerializer(VerificationSerializer):
    filename = serializers.CharField()


class HealthDatabaseSerializer(serializers.Serializer):
    newest_backup_filename = serializers.CharField(
        allow_null=True, required=False, help_text="Only for authenticated staff"
    )
    newest_backup_at = serializers.DateTimeField(allow_null=True)
    age_hours = serializers.FloatField(allow_null=True)
    verification = serializers.DictField(allow_null=True)


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["healthy", "unhealthy"])
    checked_at = serializers.DateTimeField()
    max_age_hours = serializers.IntegerField(allow_null=True)
    problems = serializers.ListField(child=serializers.CharField())
    warnings = serializers.ListField(
        child=serializers.CharField(), help_text="Worth knowing without being unhealthy: drills that cannot run"
    )
    databases = serializers.DictField(child=HealthDatabaseSerializer())


def iso_datetime(value, zone):
    """What DRF's DateTimeField writes (ISO 8601 in the current time zone, UTC as Z), for less."""
    if not value:
        return None
    if not (zone is UTC and value.utcoffset() == ZERO):  # the database's values are UTC already
        value = value.astimezone(zone)
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def current_zone():
    zone = timezone.get_current_timezone()
    return UTC if getattr(zone, "key", None) == "UTC" else zone


def api_datetime(value):
    """A datetime as every answer of the API writes it: DRF's way, in the current time zone."""
    return iso_datetime(value, current_zone())


class BackupListSerializer(serializers.ListSerializer):
    """A queryset of backups is read as plain rows (``BackupRow``): only the columns shown and
    the ones their figures need, and no models."""

    def to_representation(self, data):
        if isinstance(data, QuerySet):
            data = (BackupRow(values) for values in data.values(*self.columns))
        return [self.child.to_representation(item) for item in data]

    @cached_property
    def columns(self):
        shown = {field.attname for field in Backup._meta.concrete_fields} & set(self.child.fields)
        return sorted(shown | set(BackupRow.COLUMNS))


class BackupSerializer(serializers.Serializer):
    """A backup as the spec lists it; fields after ``database_host`` are additions."""

    class Meta:
        list_serializer_class = BackupListSerializer

    def to_representation(self, backup):
        """Each declared field read straight off ``backup`` (a model or a ``BackupRow``), all in
        one ``attrgetter`` call. DRF's field-by-field path costs about 40 µs a row, and a catalog
        of 10,000 backups must list in well under 200 ms; the declared fields remain the contract
        and the API description."""
        names, read, datetimes, as_datetime = self.reader
        values = read(backup)
        if datetimes:
            values = list(values)
            for position in datetimes:
                values[position] = as_datetime(values[position])
        return dict(zip(names, values, strict=True))

    @cached_property
    def reader(self):
        zone = current_zone()
        names = tuple(self.fields)
        datetimes = [i for i, field in enumerate(self.fields.values()) if isinstance(field, serializers.DateTimeField)]
        return names, attrgetter(*names), datetimes, partial(iso_datetime, zone=zone)

    filename = serializers.CharField()
    timestamp = serializers.CharField(help_text="Creation time in UTC, YYYYMMDD_HHMMSS")
    created_at = serializers.DateTimeField()
    description = serializers.CharField()
    size_bytes = serializers.IntegerField(allow_null=True)
    database_name = serializers.CharField()
    database_host = serializers.CharField()
    database = serializers.CharField(help_text="Django database alias")
    engine = serializers.CharField()
    engine_matches_database = serializers.BooleanField(
        help_text="False when its database alias now uses another engine (or is gone): it cannot be restored there"
    )
    status = serializers.CharField()
    trigger = serializers.CharField()
    sha256 = serializers.CharField()
    uncompressed_bytes = serializers.IntegerField(allow_null=True)
    duration_seconds = serializers.FloatField(allow_null=True)
    created_by = serializers.CharField()
    verified_at = serializers.DateTimeField(allow_null=True, help_text="When it was last verified")
    verification = serializers.SerializerMethodField(help_text="The last verification's outcome, or null")

    @extend_schema_field(VerificationSerializer(allow_null=True))
    def get_verification(self, backup):
        return backup.verification

    locations = serializers.ListField(
        child=serializers.CharField(), help_text='Storages holding a verified copy: "primary", "offsite"'
    )
    offsite_error = serializers.CharField(help_text="Why the off-site copy failed; empty when it did not")
    encrypted = serializers.BooleanField(help_text="Encrypted with age (the filename ends in .age)")
    bytes_written = serializers.IntegerField(help_text="Bytes of the file written so far (all of it once succeeded)")
    progress_at = serializers.DateTimeField(allow_null=True, help_text="When the writer last reported progress")
    elapsed_seconds = serializers.FloatField(help_text="Time since the start, up to the end once ended")
    bytes_per_second = serializers.FloatField(allow_null=True, help_text="Average rate at which the file was written")
    error = serializers.CharField(help_text="Why it failed, when it did")
    migrations = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        allow_null=True,
        help_text="Applied migrations per app when it was taken; null: none recorded",
    )
    django_version = serializers.CharField(help_text="Django's version when it was taken")
    app_version = serializers.CharField(help_text="The project's version (BACKUP_APP_VERSION or git commit)")


class BackupSummarySerializer(BackupSerializer):
    """A backup in the list, which holds only backups that can be restored: without the fields
    that describe a backup still being written (``GET /backups/{filename}`` has them). Fewer
    fields keep a catalog of 10,000 backups quick to list."""

    bytes_written = None
    progress_at = None
    elapsed_seconds = None
    bytes_per_second = None
    error = None
    migrations = None
    django_version = None
    app_version = None


class PagedBackupsSerializer(serializers.Serializer):
    """The list with ``?limit=`` (DRF's limit/offset pagination)."""

    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = BackupSummarySerializer(many=True)


class StatusSerializer(serializers.Serializer):
    status = serializers.CharField()
    message = serializers.CharField()
    filename = serializers.CharField()
    timestamp = serializers.DateTimeField()


class CreateResponseSerializer(StatusSerializer):
    warnings = serializers.ListField(child=serializers.CharField(), help_text="The off-site copy failed, say")


JOB_ID_HELP = "The restore's id: GET /backups/restores/{job_id} shows it"


class RestoreResponseSerializer(StatusSerializer):
    pre_restore_backup = serializers.CharField(allow_null=True)
    method = serializers.ChoiceField(
        choices=["in-place", "switch"], help_text="switch: loaded beside the live database, then swapped names"
    )
    undo_database = serializers.CharField(
        allow_null=True, help_text="After a switch: the replaced database, kept for BACKUP_RESTORE_KEEP_OLD_HOURS"
    )
    warnings = serializers.ListField(child=serializers.CharField())
    migrations_applied = serializers.ListField(
        child=serializers.CharField(), help_text="What migrate applied after the restore (app.migration, in order)"
    )
    job_id = serializers.UUIDField(help_text=JOB_ID_HELP)


class MigrationDiffSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=["equal", "behind", "ahead", "unknown"])
    behind = serializers.ListField(child=serializers.CharField(), help_text="What migrate applies after the restore")
    ahead = serializers.ListField(child=serializers.CharField(), help_text="Migrations this code does not know")
    message = serializers.CharField()


class DatabaseDescriptionSerializer(serializers.Serializer):
    alias = serializers.CharField()
    engine = serializers.CharField()
    name = serializers.CharField()
    host = serializers.CharField()
    size_bytes = serializers.IntegerField(allow_null=True)


class RestorePreviewSerializer(serializers.Serializer):
    """What a restore would do, before it runs (``services.restore_preview``)."""

    filename = serializers.CharField(source="backup.filename")
    database = DatabaseDescriptionSerializer(help_text="The database it would overwrite")
    pre_restore_backup = serializers.BooleanField(help_text="Whether the current state is backed up first")
    all_or_nothing = serializers.BooleanField(help_text="False where a failed restore is undone by that backup")
    warning = serializers.CharField(allow_null=True, help_text="About the backup's verification")
    migrations = MigrationDiffSerializer()
    refused = serializers.CharField(allow_null=True, help_text="Why a restore would be refused unless forced")


class DatabaseCopySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField(help_text="The copy's database (SQLite: its file)")
    database = serializers.CharField(help_text="The alias on whose server it lives")
    engine = serializers.CharField()
    host = serializers.CharField()
    filename = serializers.CharField(help_text="The backup restored into it")
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField()


class CopyResponseSerializer(StatusSerializer):
    copy = DatabaseCopySerializer()
    warnings = serializers.ListField(child=serializers.CharField())
    job_id = serializers.UUIDField(help_text=JOB_ID_HELP)


class ModelRestoreResponseSerializer(StatusSerializer):
    models = serializers.ListField(child=serializers.CharField(), help_text="Models whose rows were replaced")
    rows = serializers.DictField(child=serializers.IntegerField(), help_text="Rows copied per table")
    pre_restore_backup = serializers.CharField(allow_null=True)
    warnings = serializers.ListField(child=serializers.CharField())
    job_id = serializers.UUIDField(help_text=JOB_ID_HELP)


class InsertedRowsSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    pks = serializers.ListField(child=PrimaryKeyField())


class ConflictSerializer(serializers.Serializer):
    model = serializers.CharField()
    pk = PrimaryKeyField()
    differs = serializers.ListField(child=serializers.CharField(), help_text="The fields whose values differ")


class UndeleteResponseSerializer(StatusSerializer):
    dry_run = serializers.BooleanField()
    inserted = serializers.DictField(
        child=InsertedRowsSerializer(), help_text="Per model, the rows inserted (in a dry run: that would be)"
    )
    unchanged = serializers.DictField(
        child=serializers.IntegerField(), help_text="Per model, the rows that are there already, the same"
    )
    conflicts = ConflictSerializer(many=True, help_text="Rows there with other values: listed, never overwritten")
    warnings = serializers.ListField(child=serializers.CharField())


class AcceptedSerializer(StatusSerializer):
    """202: the work has started in the background; ``status`` is "pending"."""


class RestoreAcceptedSerializer(AcceptedSerializer):
    job_id = serializers.UUIDField(help_text="The restore's id: poll /backups/restores/{job_id}")


class ForeignKeyFindingSerializer(serializers.Serializer):
    """Rows whose foreign key would point at rows that a restore of chosen models would leave missing."""

    model = serializers.CharField(help_text="The model whose rows would point nowhere")
    table = serializers.CharField()
    column = serializers.CharField()
    target = serializers.CharField(help_text="The model they would point at")
    values = serializers.ListField(child=serializers.JSONField(), help_text="The missing keys (the first ten)")
    more = serializers.BooleanField(help_text="Whether more are missing than listed")


class RestoreJobSerializer(serializers.Serializer):
    """A restore (of any kind) as the journal records it; an asynchronous one is polled here.
    Fields that another kind of restore fills stay empty."""

    id = serializers.UUIDField()
    action = serializers.ChoiceField(
        choices=[Action.RESTORE, Action.RESTORE_COPY, Action.RESTORE_MODELS],
        help_text='restore: the whole database; restore-copy: into a new database ("into"); '
        'restore-models: chosen models ("models")',
    )
    status = serializers.CharField(help_text="pending, running, succeeded or failed")
    filename = serializers.CharField(help_text="The backup being restored")
    database = serializers.CharField(help_text="Database alias restored into")
    requested_by = serializers.CharField(source="actor")
    origin = serializers.CharField()
    started_at = serializers.DateTimeField(help_text="When it was asked for")
    finished_at = serializers.DateTimeField(allow_null=True)
    elapsed_seconds = serializers.FloatField(help_text="Time since it was asked for, up to its end once ended")
    message = serializers.CharField(help_text="The outcome, or why it failed")
    pre_restore_backup = serializers.CharField(
        source="details.pre_restore_backup", allow_null=True, default=None, help_text="The backup that undoes it"
    )
    warnings = serializers.ListField(child=serializers.CharField(), source="details.warnings", default=list)
    migrations_applied = serializers.ListField(
        child=serializers.CharField(), source="details.migrations_applied", default=list
    )
    undo_database = serializers.CharField(
        source="details.undo_database", allow_null=True, default=None, help_text="After a switch: the replaced database"
    )
    into = serializers.CharField(
        source="details.into", allow_null=True, default=None, help_text="A copy: its database (SQLite: its file)"
    )
    models = serializers.ListField(
        child=serializers.CharField(), source="details.models", default=list, help_text="Models whose rows it replaced"
    )
    rows = serializers.DictField(
        child=serializers.IntegerField(), source="details.rows", default=dict, help_text="Rows copied per table"
    )
    findings = ForeignKeyFindingSerializer(
        many=True, source="details.findings", default=list, help_text="Why a restore of chosen models was refused"
    )


class KeptSerializer(serializers.Serializer):
    filename = serializers.CharField()
    reasons = serializers.ListField(child=serializers.CharField())


class CleanupResponseSerializer(serializers.Serializer):
    deleted_count = serializers.IntegerField()
    deleted_files = serializers.ListField(child=serializers.CharField())
    total_size_freed = serializers.IntegerField()
    retention_days = serializers.IntegerField()
    cleanup_date = serializers.DateTimeField()
    dry_run = serializers.BooleanField()
    kept = KeptSerializer(many=True)
    deleted_failed_attempts = serializers.IntegerField()


class SyncResponseSerializer(serializers.Serializer):
    status = serializers.CharField()
    message = serializers.CharField()
    added = serializers.ListField(child=serializers.CharField())
    updated = serializers.ListField(child=serializers.CharField())
    missing = serializers.ListField(child=serializers.CharField())
    interrupted = serializers.ListField(child=serializers.CharField())
    copied_offsite = serializers.ListField(child=serializers.CharField())
    offsite_failed = serializers.ListField(child=serializers.CharField())


class JobScheduleSerializer(serializers.Serializer):
    schedule = serializers.CharField(help_text="The cron expression as given")
    description = serializers.CharField(help_text="The same in words")
    next_runs = serializers.ListField(child=serializers.DateTimeField())


class RetentionSerializer(serializers.Serializer):
    days = serializers.IntegerField()
    min_count = serializers.IntegerField()
    keep_daily = serializers.IntegerField(allow_null=True)
    keep_weekly = serializers.IntegerField(allow_null=True)
    keep_monthly = serializers.IntegerField(allow_null=True)


class LastScheduledSerializer(serializers.Serializer):
    filename = serializers.CharField()
    database = serializers.CharField()
    created_at = serializers.DateTimeField()
    status = serializers.CharField()
    error = serializers.CharField()


class ScheduleSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    timezone = serializers.CharField(help_text="Time zone of cron on this host, which the schedules use")
    databases = serializers.ListField(child=serializers.CharField())
    backup = JobScheduleSerializer()
    cleanup = JobScheduleSerializer()
    verification = JobScheduleSerializer(allow_null=True)
    retention = RetentionSerializer()
    last_scheduled_backup = LastScheduledSerializer(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    status = serializers.CharField(help_text='Always "error"')
    message = serializers.CharField()
    pre_restore_backup = serializers.CharField(
        required=False,
        allow_null=True,
        help_text="A restore that stopped partway (MySQL): the backup restored to undo it; "
        "a restore whose migrate failed: the backup that undoes it",
    )
    undone = serializers.BooleanField(
        required=False, help_text="Whether that undo brought the database back as it was before the restore"
    )
    failed_migration = serializers.CharField(
        required=False, allow_null=True, help_text="A migrate after a restore failed: the migration that failed"
    )
    migrations_applied = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="What that migrate applied before it failed"
    )
    findings = ForeignKeyFindingSerializer(
        many=True, required=False, help_text="A restore of chosen models refused: the foreign keys that would break"
    )
