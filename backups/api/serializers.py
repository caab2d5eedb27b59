"""Request and response shapes of the REST API (the spec's contract, then extra fields)."""

from rest_framework import serializers

from ..services.backups import DESCRIPTION_MAX_LENGTH


class StrictCharField(serializers.CharField):
    """A string and only a string: DRF would otherwise turn 123 or true into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
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


class CreateRequestSerializer(RequestSerializer):
    description = StrictCharField(
        required=False, allow_blank=True, max_length=DESCRIPTION_MAX_LENGTH, trim_whitespace=False, default=""
    )
    database = StrictCharField(required=False, max_length=64, default="default")


class RestoreRequestSerializer(RequestSerializer):
    filename = StrictCharField(max_length=1000, trim_whitespace=False)
    pre_restore_backup = StrictBooleanField(required=False, allow_null=True, default=None)
    target_database = StrictCharField(required=False, max_length=64, allow_null=True, default=None)


class CleanupRequestSerializer(RequestSerializer):
    dry_run = StrictBooleanField(required=False, default=False)


class BackupSerializer(serializers.Serializer):
    """A backup as the spec lists it; fields after ``database_host`` are additions."""

    filename = serializers.CharField()
    timestamp = serializers.CharField(help_text="Creation time in UTC, YYYYMMDD_HHMMSS")
    created_at = serializers.DateTimeField()
    description = serializers.CharField()
    size_bytes = serializers.IntegerField(allow_null=True)
    database_name = serializers.CharField()
    database_host = serializers.CharField()
    database = serializers.CharField(help_text="Django database alias")
    engine = serializers.CharField()
    status = serializers.CharField()
    trigger = serializers.CharField()
    sha256 = serializers.CharField()
    uncompressed_bytes = serializers.IntegerField(allow_null=True)
    duration_seconds = serializers.FloatField(allow_null=True)
    created_by = serializers.CharField()
    locations = serializers.ListField(
        child=serializers.CharField(), help_text='Storages holding a verified copy: "primary", "offsite"'
    )
    offsite_error = serializers.CharField(help_text="Why the off-site copy failed; empty when it did not")
    encrypted = serializers.BooleanField(help_text="Encrypted with age (the filename ends in .age)")


class StatusSerializer(serializers.Serializer):
    status = serializers.CharField()
    message = serializers.CharField()
    filename = serializers.CharField()
    timestamp = serializers.DateTimeField()


class CreateResponseSerializer(StatusSerializer):
    warnings = serializers.ListField(child=serializers.CharField(), help_text="The off-site copy failed, say")


class RestoreResponseSerializer(StatusSerializer):
    pre_restore_backup = serializers.CharField(allow_null=True)
    warnings = serializers.ListField(child=serializers.CharField())


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


class ErrorSerializer(serializers.Serializer):
    status = serializers.CharField(help_text='Always "error"')
    message = serializers.CharField()
