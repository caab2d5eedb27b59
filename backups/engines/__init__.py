"""Database engines, one module each, chosen by the Django alias's vendor when first needed."""

from django.db import connections
from django.utils.module_loading import import_string

from ..exceptions import ConfigurationError, InvalidRequest
from ..naming import ALIAS_PATTERN

ENGINES = {
    "mysql": "backups.engines.mysql.MySQLEngine",
    "postgresql": "backups.engines.postgresql.PostgreSQLEngine",
    "sqlite": "backups.engines.sqlite.SQLiteEngine",
}


def get_engine(alias="default"):
    """The engine for the database ``alias`` of ``settings.DATABASES``."""
    if alias not in connections.settings:
        known = ", ".join(sorted(connections.settings))
        raise InvalidRequest(f"Unknown database {alias!r}; configured databases: {known}.")
    if not ALIAS_PATTERN.fullmatch(alias):
        raise ConfigurationError(
            f"The database alias {alias!r} cannot be part of a backup's filename; "
            "name it with letters, digits, '_' and '-' only."
        )
    vendor = connections[alias].vendor
    try:
        engine_class = import_string(ENGINES[vendor])
    except KeyError:
        raise ConfigurationError(
            f"Database {alias!r} uses {vendor}, which the backup system does not support "
            f"(supported: {', '.join(sorted(ENGINES))})."
        ) from None
    return engine_class(alias)
