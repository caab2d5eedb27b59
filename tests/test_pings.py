"""Dead-man pings of the scheduled backup, to a real HTTP server on 127.0.0.1: start, then
success or failure with the reason; a ping that cannot be delivered never fails the backup."""

import logging

import pytest

from backups.models import Backup
from backups.services.schedule import run_scheduled_backups

from .conftest import free_port, http_receiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receiver(settings):
    with http_receiver() as server:
        settings.BACKUP_PING_URL = f"{server.url}/ping/5f2d-check/"
        yield server


def test_a_scheduled_backup_pings_start_then_success(receiver):
    [backup] = run_scheduled_backups()
    assert receiver.paths == ["/ping/5f2d-check/start", "/ping/5f2d-check"]
    assert {request.method for request in receiver.requests} == {"POST"}
    assert receiver.requests[1].body.startswith(f"default: {backup.filename}, ")


def test_a_failed_scheduled_backup_pings_fail_with_the_reason(receiver, settings, extra_alias):
    settings.BACKUP_DATABASES = ["default", extra_alias("unreachable", PORT="1")]
    made = run_scheduled_backups()
    assert [backup.database for backup in made] == ["default"]  # the other database still got its backup
    assert receiver.paths == ["/ping/5f2d-check/start", "/ping/5f2d-check/fail"]
    body = receiver.requests[1].body
    assert body.startswith("unreachable: Cannot connect to the PostgreSQL database") and "default" not in body


def test_a_ping_that_fails_never_fails_the_backup(receiver, settings, caplog):
    receiver.answer = 500
    with caplog.at_level(logging.INFO, logger="backups"):
        [backup] = run_scheduled_backups()
    assert backup.status == "succeeded" and len(receiver.paths) == 2
    assert "Dead-man ping (start) to 127.0.0.1 failed: HTTP Error 500" in caplog.text
    assert "5f2d-check" not in caplog.text  # the URL is the secret; only its host is logged
    settings.BACKUP_PING_URL = f"http://127.0.0.1:{free_port()}/ping/nobody-listens"
    settings.BACKUP_SCHEDULE = "* * * * *"
    Backup.objects.all().delete()  # so that this run has its backup to make
    with caplog.at_level(logging.INFO, logger="backups"):
        [again] = run_scheduled_backups()
    assert again.status == "succeeded"
    assert "Dead-man ping (success) to 127.0.0.1 failed" in caplog.text


def test_without_a_ping_url_nothing_is_called(receiver, settings):
    settings.BACKUP_PING_URL = ""
    assert len(run_scheduled_backups()) == 1
    assert receiver.requests == []
