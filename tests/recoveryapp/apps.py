from django.apps import AppConfig


class RecoveryAppConfig(AppConfig):
    """A small site app with a real migration history, for the migration-aware restore tests."""

    name = "tests.recoveryapp"
    label = "recoveryapp"
    default_auto_field = "django.db.models.AutoField"
