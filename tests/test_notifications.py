"""Notifications to a real SMTP server and a real HTTP webhook, with exactly the events that
matter; and the health alarm: fresh, stale, failed verification, one notice per change."""

import json
import logging
from contextlib import contextmanager
from datetime import timedelta
from email import message_from_string
from email.policy import default
from io import StringIO

import pytest
from aiosmtpd.controller import Controller
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from backups import checks, services
from backups.models import Backup
from backups.services.schedule import run_scheduled_backups, run_scheduled_cleanup

from .conftest import free_port, http_receiver, make_staff, token_client

pytestmark = pytest.mark.django_db(transaction=True)
COMMAND = services.Actor.command()


class Inbox:
    """aiosmtpd handler keeping what it receives."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, message_from_string(envelope.content.decode(), policy=default)))
        return "250 Message accepted"


@contextmanager
def smtp_and_webhook():
    """A real SMTP server and a real webhook receiver on 127.0.0.1: (inbox, smtp, webhook)."""
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        with http_receiver() as webhook:
            yield inbox, smtp, webhook
    finally:
        smtp.stop()


@pytest.fixture
def channels(settings):
    """A real SMTP server and a real webhook receiver, both configured for notifications."""
    with smtp_and_webhook() as (inbox, smtp, webhook):
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp.port
        settings.BACKUP_NOTIFY_EMAILS = "ops@example.com, brewer@example.com"
        settings.BACKUP_NOTIFY_WEBHOOK_URL = f"{webhook.url}/hooks/backups"
        yield inbox, webhook


def subjects(channels):
    inbox, webhook = channels
    emails = [message["Subject"].removeprefix("[HoppyBrew backups] ") for _, message in inbox.messages]
    posts = [body["text"].split("\n")[0].split(": ", 1)[1].rstrip("*") for body in webhook.json_bodies]
    assert emails == posts, "email and webhook carry the same events"
    return emails


def test_a_failed_scheduled_backup_is_announced_once_with_the_reason(channels, settings, extra_alias):
    settings.BACKUP_DATABASES = extra_alias("unreachable", PORT="1")
    run_scheduled_backups()
    assert subjects(channels) == ["Scheduled backup failed: unreachable", "Backups are unhealthy"]
    inbox, webhook = channels
    recipients, message = inbox.messages[0]
    assert sorted(recipients) == ["brewer@example.com", "ops@example.com"]
    assert "Cannot connect to the PostgreSQL database" in message.get_content()
    assert webhook.requests[0].content_type == "application/json"
    assert "Cannot connect" in webhook.json_bodies[0]["text"]


def test_successful_scheduled_backups_are_announced_only_when_asked(channels, settings):
    run_scheduled_backups()
    assert subjects(channels) == []
    settings.BACKUP_NOTIFY_ON_SUCCESS = "true"
    settings.BACKUP_SCHEDULE = "* * * * *"
    Backup.objects.update(created_at=timezone.now() - timedelta(minutes=5))  # a new run
    run_scheduled_backups()
    assert subjects(channels) == ["Scheduled backup completed: default"]


def test_a_failed_cleanup_is_announced(channels, settings):
    services.create_backup(actor=COMMAND)
    settings.BACKUP_RETENTION_DAYS = "a month"
    run_scheduled_cleanup()
    assert subjects(channels) == ["Scheduled backup cleanup failed"]
    assert "BACKUP_RETENTION_DAYS" in channels[0].messages[0][1].get_content()


def test_a_failed_verification_is_announced(channels, backup_dir):
    backup = services.create_backup(actor=COMMAND)
    (backup_dir / backup.filename).write_bytes(b"not what was written")
    assert not services.verify_backup(backup.filename, actor=COMMAND).passed
    assert subjects(channels) == [f"Backup verification failed: {backup.filename}"]


def test_every_restore_of_the_live_database_is_announced(channels, settings, api):
    backup = services.create_backup(actor=COMMAND)
    api.post("/backups/restore", {"filename": backup.filename, "pre_restore_backup": False}, format="json")
    assert subjects(channels) == [f"Database default restored from {backup.filename}"]
    text = channels[0].messages[0][1].get_content()
    assert "root (via api) restored database default" in text
    settings.BACKUP_NOTIFY_ON_RESTORE = "false"
    services.restore_backup(backup.filename, actor=COMMAND, pre_restore_backup=False)
    assert len(subjects(channels)) == 1
    services.verify_backup(backup.filename, actor=COMMAND, level="restore")  # a drill is no live restore
    assert len(subjects(channels)) == 1


def test_a_notification_that_cannot_be_sent_never_breaks_the_backup(settings, caplog, extra_alias):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nobody listens
    settings.BACKUP_NOTIFY_EMAILS = "ops@example.com"
    settings.BACKUP_NOTIFY_ON_SUCCESS = "true"
    with http_receiver(answer=500) as webhook:
        settings.BACKUP_NOTIFY_WEBHOOK_URL = f"{webhook.url}/"
        with caplog.at_level(logging.INFO, logger="backups"):
            made = run_scheduled_backups()
    assert len(made) == 1 and made[0].status == "succeeded"
    assert "Backup notification email to ops@example.com failed" in caplog.text
    assert "Backup notification webhook failed: HTTP Error 500" in caplog.text
    assert len(webhook.requests) == 1


# -- health ----------------------------------------------------------------------------------------


@pytest.fixture
def monitored(settings):
    settings.BACKUP_ENABLED = "true"  # so the 26-hour limit applies
    return settings


def health(client):
    response = client.get("/backups/health")
    return response.status_code, response.json()


def test_health_fresh_stale_and_failed_verification(monitored, api):
    code, body = health(api)
    assert code == 503 and body["problems"] == ["Database 'default' has no successful backup."]
    backup = services.create_backup(actor=COMMAND)
    code, body = health(api)
    assert code == 200 and body["status"] == "healthy" and body["problems"] == []
    assert body["databases"]["default"]["newest_backup_filename"] == backup.filename
    Backup.objects.filter(pk=backup.pk).update(created_at=timezone.now() - timedelta(hours=30))
    code, body = health(api)
    assert code == 503
    assert body["problems"] == ["The newest backup of database 'default' is 30 hours old (limit 26 hours)."]
    Backup.objects.filter(pk=backup.pk).update(
        created_at=timezone.now(), verified_at=timezone.now(), verification={"passed": False, "level": "restore"}
    )
    code, body = health(api)
    assert code == 503 and "latest verification of a backup of database 'default' failed" in body["problems"][0]


def test_one_notification_per_change_of_health(monitored, channels, api):
    for _ in range(3):
        assert health(api)[0] == 503
    assert subjects(channels) == ["Backups are unhealthy"]
    services.create_backup(actor=COMMAND)
    for _ in range(3):
        assert health(api)[0] == 200
    assert subjects(channels) == ["Backups are unhealthy", "Backups are healthy again"]


def test_who_may_read_the_health(monitored, settings):
    made = services.create_backup(actor=COMMAND)
    services.verify_backup(made.filename, actor=COMMAND)  # its facts name the file too
    anonymous = APIClient()
    refused = anonymous.get("/backups/health")
    assert refused.status_code == 401 and refused["WWW-Authenticate"] == "Token"
    settings.BACKUP_HEALTH_TOKEN = "monitor-secret"
    monitor = APIClient()
    monitor.credentials(HTTP_AUTHORIZATION="Bearer monitor-secret")
    code, body = health(monitor)
    assert code == 200 and made.filename not in json.dumps(body)
    wrong = APIClient()
    wrong.credentials(HTTP_AUTHORIZATION="Bearer guess")
    assert wrong.get("/backups/health").status_code == 401
    settings.BACKUP_HEALTH_PUBLIC = "true"
    code, body = health(anonymous)
    assert code == 200 and made.filename not in json.dumps(body)
    staff = token_client(make_staff("watcher", "view_backup"))
    assert health(staff)[1]["databases"]["default"]["newest_backup_filename"].startswith("hoppybrew_backup_")


def test_the_health_command_exits_non_zero_when_unhealthy(monitored):
    with pytest.raises(CommandError, match="has no successful backup"):
        call_command("backups", "health", stdout=StringIO())
    services.create_backup(actor=COMMAND)
    out = StringIO()
    call_command("backups", "health", stdout=out)
    assert "Backups are healthy." in out.getvalue()


# -- Apprise ---------------------------------------------------------------------------------------


@pytest.fixture
def apprise_channels(settings):
    """A real SMTP server and a real JSON webhook, reached through Apprise URLs only."""
    with smtp_and_webhook() as (inbox, smtp, webhook):
        settings.BACKUP_NOTIFY_URLS = (
            f"mailto://127.0.0.1:{smtp.port}?from=backups@example.com&to=ops@example.com, "
            f"json://127.0.0.1:{webhook.server_port}/hooks/apprise"
        )
        yield inbox, webhook


def apprise_events(apprise_channels):
    """(title, type) of each JSON notification, checked against the emails."""
    inbox, webhook = apprise_channels
    events = [(body["title"].split(": ", 1)[1], body["type"]) for body in webhook.json_bodies]
    emails = [message["Subject"].split(": ", 1)[1] for _, message in inbox.messages]
    assert emails == [title for title, _type in events], "email and webhook carry the same events"
    return events


def test_apprise_urls_receive_the_same_events(apprise_channels, settings, extra_alias):
    settings.BACKUP_DATABASES = extra_alias("unreachable", PORT="1")
    run_scheduled_backups()
    assert apprise_events(apprise_channels) == [
        ("Scheduled backup failed: unreachable", "failure"),
        ("Backups are unhealthy", "failure"),
    ]
    inbox, webhook = apprise_channels
    recipients, message = inbox.messages[0]
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert recipients == ["ops@example.com"] and "Cannot connect to the PostgreSQL database" in text
    assert webhook.requests[0].content_type.startswith("application/json")
    assert "Cannot connect to the PostgreSQL database" in webhook.json_bodies[0]["message"]


def test_failures_only_or_every_outcome(apprise_channels, settings):
    run_scheduled_backups()
    run_scheduled_cleanup()
    assert apprise_events(apprise_channels) == []
    settings.BACKUP_NOTIFY_ON_SUCCESS = "true"
    settings.BACKUP_SCHEDULE = "* * * * *"
    Backup.objects.update(created_at=timezone.now() - timedelta(minutes=5))  # a new run
    run_scheduled_backups()
    run_scheduled_cleanup()
    assert apprise_events(apprise_channels) == [
        ("Scheduled backup completed: default", "success"),
        ("Scheduled backup cleanup completed", "success"),
    ]


def test_the_old_channels_and_apprise_work_side_by_side(channels, apprise_channels, settings, extra_alias):
    settings.BACKUP_DATABASES = extra_alias("unreachable", PORT="1")
    run_scheduled_backups()
    expected = ["Scheduled backup failed: unreachable", "Backups are unhealthy"]
    assert subjects(channels) == expected
    assert [title for title, _type in apprise_events(apprise_channels)] == expected


def test_a_bad_or_failing_apprise_url_is_named_without_its_secret(settings, caplog):
    settings.BACKUP_NOTIFY_URLS = "json://127.0.0.1:1/hook, nosuchservice://s3cret-token@example.com"
    [problem] = checks.check_settings(None)
    assert problem.id == "backups.E001" and "BACKUP_NOTIFY_URLS: entry 2 (scheme 'nosuchservice')" in problem.msg
    assert "s3cret-token" not in problem.msg
    settings.BACKUP_NOTIFY_URLS = f"json://127.0.0.1:{free_port()}/s3cret-path"  # nobody listens
    settings.BACKUP_NOTIFY_ON_SUCCESS = "true"
    with caplog.at_level(logging.INFO, logger="backups"):
        [backup] = run_scheduled_backups()
    assert backup.status == "succeeded"
    assert "BACKUP_NOTIFY_URLS entry 1 (json://) failed" in caplog.text
    assert "s3cret-path" not in "\n".join(record.getMessage() for record in caplog.records if record.name == "backups")
