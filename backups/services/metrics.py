"""Prometheus metrics, read from the catalog and the journal at each scrape.

Nothing is counted in the process: under several gunicorn workers (and with backups made by
cron and the command line) a per-process counter would tell each scrape a different story. The
catalog is the one place every process writes to, so every figure here comes from it, and a
scrape sees the same numbers whichever worker answers it.

Times are Unix timestamps (Prometheus' ``*_timestamp_seconds`` convention); 0 means "never".
"""

from collections import defaultdict

from django.db.models import Count, Max
from django.db.models.functions import Coalesce
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from ..conf import backup_settings, max_age_hours
from ..models import Action, Backup, BackupStatus, Operation, OperationStatus
from ..storage import backup_storages
from .health import evaluate_health, require_monitor

NAMESPACE = "hoppybrew_backup"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
FINISHED_OPERATIONS = (OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.SKIPPED)


def metrics_for(*, actor, token=None):
    """The metrics page as bytes, for staff with ``backups.view_backup``, a monitor with
    BACKUP_HEALTH_TOKEN, or anyone when BACKUP_METRICS_PUBLIC is on. No label names a file."""
    require_monitor(actor, token, public=backup_settings.METRICS_PUBLIC)
    return render_metrics()


def render_metrics():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CatalogCollector())
    return generate_latest(registry)


def timestamp(moment):
    return moment.timestamp() if moment is not None else 0


def gauge(name, documentation, labels=()):
    return GaugeMetricFamily(f"{NAMESPACE}_{name}", documentation, labels=list(labels))


class CatalogCollector:
    """A prometheus_client collector whose ``collect()`` queries the catalog afresh."""

    def collect(self):
        report = evaluate_health()
        aliases = sorted(set(backup_settings.DATABASES) | set(Backup.objects.values_list("database", flat=True)))
        yield from self.database_metrics(aliases, report)
        yield from self.destination_metrics()
        yield from self.drill_metrics(aliases)
        yield self.operation_metric()
        limit = max_age_hours()
        if limit is not None:
            family = gauge("max_age_seconds", "Health fails when a database's newest backup is older than this.")
            family.add_metric([], limit * 3600)
            yield family

    def database_metrics(self, aliases, report):
        last = defaultdict(dict)
        rows = (
            Backup.objects.filter(status__in=(BackupStatus.SUCCEEDED, BackupStatus.FAILED))
            .values("database", "status")
            .annotate(last=Max(Coalesce("finished_at", "created_at")), count=Count("id"))
            .order_by()
        )
        for row in rows:
            last[row["database"]][row["status"]] = row
        success = gauge("last_success_timestamp_seconds", "When the newest successful backup finished.", ["database"])
        failure = gauge("last_failure_timestamp_seconds", "When the newest failed backup attempt ended.", ["database"])
        size = gauge("last_size_bytes", "Size of the newest successful backup as stored.", ["database"])
        duration = gauge("last_duration_seconds", "How long the newest successful backup took.", ["database"])
        restorable = gauge("restorable_backups", "Successful backups that can be restored.", ["database"])
        healthy = gauge("healthy", "1 when the database's backups are healthy (see /backups/health).", ["database"])
        for alias in aliases:
            succeeded = last[alias].get(BackupStatus.SUCCEEDED, {})
            success.add_metric([alias], timestamp(succeeded.get("last")))
            failure.add_metric([alias], timestamp(last[alias].get(BackupStatus.FAILED, {}).get("last")))
            restorable.add_metric([alias], succeeded.get("count", 0))
            newest = Backup.objects.for_database(alias).newest()
            if newest is not None:
                size.add_metric([alias], newest.size_bytes or 0)
                duration.add_metric([alias], newest.duration_seconds or 0)
            if alias in report.databases:
                healthy.add_metric([alias], 0 if report.database_problems.get(alias) else 1)
        yield from (success, failure, size, duration, restorable, healthy)

    def destination_metrics(self):
        """Bytes per destination, and whether the newest backup reached each one: a destination
        that the newest backup is missing from failed to take its copy (and no sync has made it since)."""
        labels = [label for label, _storage in backup_storages()]
        stored = gauge(
            "stored_bytes", "Bytes of restorable backups held by a destination.", ["database", "destination"]
        )
        up = gauge(
            "destination_up", "1 when the newest successful backup has a copy in the destination.", ["destination"]
        )
        newest_copy = gauge(
            "destination_last_copy_timestamp_seconds",
            "When the newest backup with a copy in the destination was made.",
            ["destination"],
        )
        totals = defaultdict(int)
        newest_at = {}
        newest = None
        backups = Backup.objects.restorable().values_list("database", "size_bytes", "locations", "created_at")
        for database, size_bytes, locations, created_at in backups.order_by("created_at"):
            newest = locations
            for label in locations:
                totals[database, label] += size_bytes or 0
                newest_at[label] = created_at
        for (database, label), total in sorted(totals.items()):
            stored.add_metric([database, label], total)
        for label in labels:
            up.add_metric([label], 1 if newest is None or label in newest else 0)
            newest_copy.add_metric([label], timestamp(newest_at.get(label)))
        yield from (stored, up, newest_copy)

    def drill_metrics(self, aliases):
        """From the journal: every drill is recorded there, while a backup's row keeps only its
        latest verification."""
        passed = gauge("last_drill_success_timestamp_seconds", "When a restore drill last passed.", ["database"])
        failed = gauge("last_drill_failure_timestamp_seconds", "When a restore drill last failed.", ["database"])
        rows = (
            Operation.objects.filter(
                action=Action.VERIFY,
                details__level="restore",
                status__in=(OperationStatus.SUCCEEDED, OperationStatus.FAILED),
            )
            .values("database", "status")
            .annotate(last=Max("finished_at"))
            .order_by()
        )
        last = {(row["database"], row["status"]): row["last"] for row in rows}
        for alias in aliases:
            passed.add_metric([alias], timestamp(last.get((alias, OperationStatus.SUCCEEDED))))
            failed.add_metric([alias], timestamp(last.get((alias, OperationStatus.FAILED))))
        yield from (passed, failed)

    def operation_metric(self):
        family = CounterMetricFamily(
            f"{NAMESPACE}_operations",
            "Finished operations in the journal, by kind and outcome.",
            labels=["kind", "outcome"],
        )
        rows = (
            Operation.objects.filter(status__in=FINISHED_OPERATIONS)
            .values("action", "status")
            .annotate(count=Count("id"))
            .order_by("action", "status")
        )
        for row in rows:
            family.add_metric([row["action"], row["status"]], row["count"])
        return family
