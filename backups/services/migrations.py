"""What the database's schema is, in Django's terms, and how a backup's compares with the code.

Every manifest records the migrations applied when the backup was taken, Django's version and
the project's. A restore compares them with the migration graph of the code that runs now:
a backup that is *behind* is migrated forward after the restore; one that is *ahead* (it holds
migrations this code has never heard of, from a newer release) is refused unless forced, since
the code would then run against a schema it does not know and cannot migrate back.
"""

import functools
import logging
import subprocess
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import django
from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from ..conf import backup_settings
from ..exceptions import InvalidRequest, MigrateFailed
from ..formatting import first_line

logger = logging.getLogger("backups")

EQUAL, BEHIND, AHEAD, UNKNOWN = "equal", "behind", "ahead", "unknown"


def migration_state(engine):
    """The manifest's record of the schema: applied migrations per app (None when the database
    has no ``django_migrations`` table), Django's version and the project's. Read on the
    engine's own connection, like everything else a backup reads from the database."""
    return {
        "migrations": applied_migrations(engine),
        "django_version": django.get_version(),
        "app_version": app_version(),
    }


def applied_migrations(engine):
    connection = engine.connect()
    try:
        with closing(connection.cursor()) as cursor:
            try:
                cursor.execute("SELECT app, name FROM django_migrations")
            except Exception:  # no such table; the drivers' errors share no base class
                return None
            rows = cursor.fetchall()
    finally:
        connection.close()
    applied = {}
    for app, name in sorted(rows):
        applied.setdefault(app, []).append(name)
    return applied


def app_version():
    """BACKUP_APP_VERSION, else the git commit the project runs from, else ""."""
    return backup_settings.APP_VERSION or git_commit()


@functools.cache
def git_commit():
    """The checkout's commit; the code does not change under a running process."""
    directory = Path(getattr(settings, "BASE_DIR", None) or Path.cwd())
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


@dataclass
class MigrationDiff:
    """A backup's migrations against the code's: ``state`` is equal, behind (``behind`` lists what
    ``migrate`` will apply after the restore, in order), ahead (``ahead`` lists what this code does
    not know; ``behind`` may be non-empty too) or unknown (the backup recorded none)."""

    state: str
    behind: list = field(default_factory=list)
    ahead: list = field(default_factory=list)

    @property
    def message(self):
        if self.state == UNKNOWN:
            return "The backup records no migrations (it predates this feature or is not a Django database)."
        if self.state == EQUAL:
            return "The backup's migrations are the code's: nothing will be migrated."
        parts = []
        if self.ahead:
            parts.append(
                f"The backup holds {len(self.ahead)} migrations this code does not know ({', '.join(self.ahead)}): "
                "it comes from a newer release."
            )
        if self.behind:
            parts.append(f"{len(self.behind)} migrations will be applied after the restore: {', '.join(self.behind)}.")
        return " ".join(parts)


def migration_diff(manifest):
    """The difference between the migrations recorded in ``manifest`` and the code's graph.

    Migrations of apps this code has no migrations for are left out, as ``migrate`` leaves
    them: an app that was removed since does not make a backup "ahead".
    """
    recorded = (manifest or {}).get("migrations")
    if recorded is None:
        return MigrationDiff(UNKNOWN)
    applied = {(app, name) for app, names in recorded.items() for name in names}
    loader = MigrationLoader(None, ignore_no_migrations=True)
    replaced = set()
    for key, migration in loader.replacements.items():
        replaced.update(migration.replaces)
        if all(tuple(old) in applied for old in migration.replaces):
            applied.add(key)  # a squashed migration counts as applied once all it replaces are
    graph = loader.graph
    behind = []
    for leaf in sorted(graph.leaf_nodes()):
        for node in graph.forwards_plan(leaf):
            if node not in applied and node not in behind:
                behind.append(node)
    ahead = sorted(
        node for node in applied if node[0] in loader.migrated_apps and node not in graph.nodes and node not in replaced
    )
    state = AHEAD if ahead else BEHIND if behind else EQUAL
    return MigrationDiff(state, behind=[label(node) for node in behind], ahead=[label(node) for node in ahead])


def label(node):
    return f"{node[0]}.{node[1]}"


def ahead_refusal(diff):
    """Why a restore of a backup from newer code is refused, or None when it is not ahead."""
    if diff.state != AHEAD:
        return None
    return (
        f"{diff.message} This code cannot use that schema, nor migrate it back. Deploy the release the backup "
        'comes from, or restore anyway with --force-ahead (API: "force_ahead": true).'
    )


def refuse_ahead(diff, force):
    """A backup from newer code is not restored unless ``force`` says the person knows."""
    reason = ahead_refusal(diff)
    if reason and not force:
        raise InvalidRequest(f"{reason} Nothing was changed.")


def pending_migrations(alias):
    """``migrate``'s plan for ``alias`` now: the migrations it would apply, in order."""
    connection = connections[alias]
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [label((migration.app_label, migration.name)) for migration, backwards in plan if not backwards]


def wants_migrate(requested):
    return backup_settings.MIGRATE_AFTER_RESTORE if requested is None else requested


def migrate_database(alias, *, restored_from=None, undo=None):
    """Run ``migrate`` on ``alias``; returns the migrations it applied. ``MigrateFailed`` names the
    migration that failed, what was applied before it, and (after a restore) the backup to undo with."""
    planned = pending_migrations(alias)
    if not planned:
        return []
    try:
        call_command("migrate", database=alias, interactive=False, verbosity=0)
    except Exception as exc:
        logger.exception("migrate failed on the database %r", alias)
        connections[alias].close()
        done = set(recorded_as_applied(alias, planned))
        applied = [name for name in planned if name in done]
        failed = next((name for name in planned if name not in done), None)
        raise MigrateFailed(
            alias=alias,
            failed_migration=failed,
            applied=applied,
            reason=first_line(exc),
            restored_from=restored_from,
            pre_restore_backup=undo,
        ) from None
    return planned


def recorded_as_applied(alias, planned):
    """Which of ``planned`` are recorded as applied now."""
    try:
        recorded = MigrationRecorder(connections[alias]).applied_migrations()
    except DatabaseError:
        return []
    return [name for name in planned if tuple(name.split(".", 1)) in recorded]
