"""GET /backups/metrics: scraped and parsed as Prometheus does, with figures that come from the
catalog; who may read it; and the shipped alert rules, checked and unit-tested by promtool."""

import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from backups import services
from backups.exceptions import BackupError

from .conftest import flip_byte, make_staff, require_tool, token_client

pytestmark = pytest.mark.django_db(transaction=True)
COMMAND = services.Actor.command()
DOCS = Path(__file__).resolve().parent.parent / "docs" / "prometheus"


def scrape(client, **headers):
    response = client.get("/backups/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(response.content.decode())


def samples(text):
    """{(sample name, ((label, value), ...)): value} of a metrics page."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped, name, **labels):
    return scraped[f"hoppybrew_backup_{name}", tuple(sorted(labels.items()))]


def test_the_metrics_tell_what_the_catalog_holds(api, settings, extra_alias, backup_dir):
    settings.BACKUP_DATABASES = ["default", extra_alias("unreachable", PORT="1")]
    backup = services.create_backup(actor=COMMAND)
    with pytest.raises(BackupError):
        services.create_backup(actor=COMMAND, database="unreachable")
    assert services.verify_backup(backup.filename, actor=COMMAND, level="restore").passed

    scraped = scrape(api)
    assert value(scraped, "last_success_timestamp_seconds", database="default") == backup.finished_at.timestamp()
    assert value(scraped, "last_failure_timestamp_seconds", database="default") == 0
    assert value(scraped, "last_success_timestamp_seconds", database="unreachable") == 0
    assert value(scraped, "last_failure_timestamp_seconds", database="unreachable") > 0
    assert value(scraped, "last_size_bytes", database="default") == backup.size_bytes
    assert value(scraped, "last_duration_seconds", database="default") == backup.duration_seconds
    assert ("hoppybrew_backup_last_size_bytes", (("database", "unreachable"),)) not in scraped
    assert value(scraped, "restorable_backups", database="default") == 1
    assert value(scraped, "restorable_backups", database="unreachable") == 0
    assert value(scraped, "stored_bytes", database="default", destination="primary") == backup.size_bytes
    assert value(scraped, "destination_up", destination="primary") == 1
    assert value(scraped, "healthy", database="default") == 1
    assert value(scraped, "healthy", database="unreachable") == 0
    drill_passed = value(scraped, "last_drill_success_timestamp_seconds", database="default")
    assert drill_passed > backup.finished_at.timestamp()
    assert value(scraped, "last_drill_failure_timestamp_seconds", database="default") == 0
    assert value(scraped, "operations_total", kind="create", outcome="succeeded") == 1
    assert value(scraped, "operations_total", kind="create", outcome="failed") == 1
    assert value(scraped, "operations_total", kind="verify", outcome="succeeded") == 1
    assert "max_age_seconds" not in str(scraped)  # no limit: scheduling is off and none is set

    flip_byte(backup_dir / backup.filename)
    assert not services.verify_backup(backup.filename, actor=COMMAND, level="restore").passed
    settings.BACKUP_MAX_AGE_HOURS = "30"
    scraped = scrape(api)
    assert value(scraped, "last_drill_failure_timestamp_seconds", database="default") > drill_passed
    assert value(scraped, "last_drill_success_timestamp_seconds", database="default") == drill_passed
    assert value(scraped, "healthy", database="default") == 0
    assert value(scraped, "operations_total", kind="verify", outcome="failed") == 1
    assert value(scraped, "max_age_seconds") == 30 * 3600


def test_a_destination_the_newest_backup_missed_is_down(api, settings, tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    settings.BACKUP_OFFSITE_STORAGE_URL = f"file://{blocked}/offsite"
    assert value(scrape(api), "destination_up", destination="offsite") == 1  # nothing to copy yet
    backup = services.create_backup(actor=COMMAND)
    assert backup.offsite_error
    scraped = scrape(api)
    assert value(scraped, "destination_up", destination="primary") == 1
    assert value(scraped, "destination_up", destination="offsite") == 0
    assert value(scraped, "destination_last_copy_timestamp_seconds", destination="offsite") == 0
    assert value(scraped, "stored_bytes", database="default", destination="primary") == backup.size_bytes
    assert ("hoppybrew_backup_stored_bytes", (("database", "default"), ("destination", "offsite"))) not in scraped


def test_who_may_read_the_metrics(settings):
    made = services.create_backup(actor=COMMAND)
    anonymous = APIClient()
    assert anonymous.get("/backups/metrics").status_code == 401
    settings.BACKUP_HEALTH_TOKEN = "monitor-secret"
    monitor = APIClient()
    monitor.credentials(HTTP_AUTHORIZATION="Bearer monitor-secret")
    # Prometheus asks for OpenMetrics first; the text format 0.0.4 is what it gets.
    accept = "application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    response = monitor.get("/backups/metrics", HTTP_ACCEPT=accept)
    assert response.status_code == 200 and made.filename not in response.content.decode()
    monitor.credentials(HTTP_AUTHORIZATION="Bearer guess")
    assert monitor.get("/backups/metrics").status_code == 401
    assert token_client(make_staff("nosy")).get("/backups/metrics").status_code == 401
    assert value(scrape(token_client(make_staff("watcher", "view_backup"))), "restorable_backups", database="default")
    settings.BACKUP_METRICS_PUBLIC = "true"
    assert value(scrape(anonymous, HTTP_ACCEPT="text/plain"), "restorable_backups", database="default") == 1


def promtool(*arguments):
    result = subprocess.run(["promtool", *arguments], cwd=DOCS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_shipped_alert_rules_pass_promtool():
    require_tool("promtool")
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", "backup-alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "backup-alerts.test.yml")
    assert "SUCCESS" in promtool("check", "config", "--syntax-only", "prometheus.yml")
