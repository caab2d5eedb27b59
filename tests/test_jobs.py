"""Asynchronous backups and restores: 202 at once, a real worker process does the work, the
catalog and the journal show how it goes, and a worker that dies or never starts leaves no
row pending forever and no database half restored."""

import os
import signal
import socket
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from backups import services
from backups.engines import get_engine
from backups.models import Backup, BackupStatus, Operation
from backups.services import backups as backup_service
from backups.services.catalog import mark_interrupted
from backups.services.journal import this_worker
from backups.storage import process_alive

from .conftest import (
    DONE,
    TableBlocker,
    assert_error,
    execute,
    fetch,
    make_staff,
    parent_of,
    poll,
    start_restore,
    token_client,
    wait_for_process,
)

pytestmark = pytest.mark.django_db(transaction=True)

SPEC_KEYS = ["status", "message", "filename", "timestamp"]


def start_backup(api, **body):
    response = api.post("/backups", {**body, "async": True}, format="json")
    assert response.status_code == 202, response.content
    return response


def wait_until_gone(pid, zombie_ok=False, timeout=60):
    """Until ``pid`` has ended and been reaped (or, with ``zombie_ok``, at least ended: a process
    whose parent died may stay a zombie when nobody reaps it)."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if zombie_ok and "zombie" in process_state(pid):
            return
        assert time.monotonic() < deadline, f"process {pid} did not end"
        time.sleep(0.05)


def process_state(pid):
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""
    return next((line for line in status.splitlines() if line.startswith("State:")), "")


def wait_for_partial_file(backup_dir, timeout=60):
    """Until a backup file is being written (under its temporary name)."""
    deadline = time.monotonic() + timeout
    while not list(backup_dir.glob(".*.partial")):
        assert time.monotonic() < deadline, "no backup file was started"
        time.sleep(0.05)


def worker_pid(worker):
    return int(worker.rpartition(":")[2])


# -- create ---------------------------------------------------------------------------------------


def test_an_async_backup_answers_202_and_a_worker_process_writes_it(api, backup_dir):
    response = start_backup(api, description="nightly")
    body = response.json()
    assert list(body)[:4] == SPEC_KEYS
    assert body["status"] == "pending"
    name = body["filename"]
    assert response["Location"] == f"http://testserver/backups/{name}"
    assert Backup.objects.get(filename=name).worker  # its process, known from the start

    done = poll(api, response["Location"], lambda item: item["status"] in DONE)
    assert done["status"] == "succeeded", done["error"]
    assert done["description"] == "nightly"
    assert done["bytes_written"] == done["size_bytes"] == (backup_dir / name).stat().st_size
    assert done["bytes_per_second"] > 0 and done["elapsed_seconds"] == done["duration_seconds"]
    assert done["error"] == ""
    assert (backup_dir / f"{name}.json").exists()
    assert name in [item["filename"] for item in api.get("/backups").json()]
    # One journal row, continued by the worker, in the name of the person who asked.
    operation = Operation.objects.get(action="create")
    assert (operation.status, operation.actor, operation.origin, operation.filename) == (
        "succeeded",
        "root",
        "api",
        name,
    )
    assert operation.client_address == "127.0.0.1" and operation.finished_at


def test_without_async_the_spec_answer_stays(api):
    for body in ({}, {"async": False}):
        response = api.post("/backups", body, format="json")
        assert response.status_code == 201
        assert response.json()["status"] == "success"
        assert Backup.objects.get(filename=response.json()["filename"]).status == "succeeded"


def test_the_progress_of_a_running_backup_is_in_the_catalog(api, backup_dir):
    """pg_dump waits behind another session's lock: the backup is observably running."""
    execute("default", "CREATE TABLE brew (id integer, notes text)")
    execute("default", "INSERT INTO brew SELECT i, md5(i::text) FROM generate_series(1, 20000) i")
    blocker = TableBlocker()
    try:
        location = start_backup(api)["Location"]
        wait_for_partial_file(backup_dir)
        first = poll(api, location, lambda item: item["status"] == "running")
        second = api.get(location).json()
        assert second["status"] == "running"
        assert second["elapsed_seconds"] > first["elapsed_seconds"] > 0
        assert second["bytes_written"] == 0 and second["bytes_per_second"] is None
        assert second["size_bytes"] is None and second["duration_seconds"] is None
    finally:
        blocker.release()
    done = poll(api, location, lambda item: item["status"] in DONE)
    assert done["status"] == "succeeded"
    assert done["bytes_written"] == done["size_bytes"] > 0
    assert done["bytes_per_second"] > 0


def test_the_writer_records_bytes_written_as_it_goes(monkeypatch, backup_dir):
    """Every chunk reports when the interval is zero: each report finds the previous one in
    the catalog, so the recorded value climbs while the backup runs."""
    execute("default", "CREATE TABLE brew (id integer, notes text)")
    # About 13 MB of SQL: a dozen chunks, and the compressor's bounded queue keeps the bytes
    # written close behind.
    execute("default", "INSERT INTO brew SELECT i, repeat(md5(i::text), 4) FROM generate_series(1, 100000) i")
    monkeypatch.setattr(backup_service, "PROGRESS_INTERVAL", 0)
    seen = []

    def report(uncompressed, written, elapsed, final):
        row = Backup.objects.get()
        seen.append((row.status, row.bytes_written, written))

    backup = services.create_backup(actor=services.Actor.command(), progress=report)
    recorded = [bytes_written for status, bytes_written, _ in seen]
    assert {status for status, _, _ in seen} == {"running"}
    assert recorded == sorted(recorded) and len(set(recorded)) >= 3
    assert recorded[-1] < backup.size_bytes == seen[-1][2]
    assert Backup.objects.get().bytes_written == backup.size_bytes


# -- restore ---------------------------------------------------------------------------------------


def test_an_async_restore_answers_202_and_is_polled_to_its_outcome(api, backup_dir):
    execute("default", "CREATE TABLE brew (id integer)", "INSERT INTO brew VALUES (1), (2)")
    name = api.post("/backups", {}, format="json").json()["filename"]
    execute("default", "INSERT INTO brew VALUES (3)")

    response = start_restore(api, name)
    body = response.json()
    assert list(body)[:4] == SPEC_KEYS
    assert body["status"] == "pending" and body["filename"] == name
    job = body["job_id"]
    assert response["Location"] == f"http://testserver/backups/restores/{job}"

    done = poll(api, response["Location"], lambda item: item["status"] in DONE)
    assert done["status"] == "succeeded", done["message"]
    assert fetch("default", "SELECT id FROM brew ORDER BY id") == [(1,), (2,)]
    assert done["id"] == job and done["filename"] == name and done["database"] == "default"
    assert done["requested_by"] == "root" and done["origin"] == "api"
    assert done["finished_at"] and done["elapsed_seconds"] > 0
    undo = done["pre_restore_backup"]
    assert Backup.objects.get(filename=undo).status == BackupStatus.SUCCEEDED
    assert [w for w in done["warnings"] if "never been verified" not in w] == []
    # The journal row survived the restore of the database that holds it, and is the job's.
    operation = Operation.objects.get(pk=job)
    assert (operation.action, operation.status, operation.actor) == ("restore", "succeeded", "root")


def test_an_async_restore_without_the_pre_restore_backup(api):
    execute("default", "CREATE TABLE brew (id integer)", "INSERT INTO brew VALUES (1)")
    name = api.post("/backups", {}, format="json").json()["filename"]
    location = start_restore(api, name, pre_restore_backup=False)["Location"]
    done = poll(api, location, lambda item: item["status"] in DONE)
    assert done["status"] == "succeeded" and done["pre_restore_backup"] is None
    assert Backup.objects.count() == 1


def test_synchronous_restores_are_polled_at_the_same_place(api):
    name = api.post("/backups", {}, format="json").json()["filename"]
    response = api.post("/backups/restore", {"filename": name, "pre_restore_backup": False}, format="json")
    assert response.status_code == 200
    operation = Operation.objects.get(action="restore")
    body = api.get(f"/backups/restores/{operation.pk}").json()
    assert body["status"] == "succeeded" and body["filename"] == name


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_an_unknown_restore_is_404(api, job_id):
    assert_error(api.get(f"/backups/restores/{job_id}"), 404, "No restore")


def test_other_operations_are_not_restores(api):
    api.post("/backups", {}, format="json")
    create = Operation.objects.get(action="create")
    assert_error(api.get(f"/backups/restores/{create.pk}"), 404)


# -- refused at once ---------------------------------------------------------------------------------


def test_refusals_come_at_request_time_and_start_nothing(api, backup_dir, monkeypatch, tmp_path):
    name = api.post("/backups", {}, format="json").json()["filename"]
    viewer = token_client(make_staff("viewer", "view_backup"))
    assert_error(viewer.post("/backups", {"async": True}, format="json"), 403, "create backups")
    assert_error(viewer.post("/backups/restore", {"filename": name, "async": True}, format="json"), 403)
    unknown = "hoppybrew_backup_19990101_000000.sql.gz"
    assert_error(api.post("/backups/restore", {"filename": unknown, "async": True}, format="json"), 404)
    with get_engine("default").lock(exclusive=True):  # a restore is running
        assert_error(api.post("/backups", {"async": True}, format="json"), 409)
    with get_engine("default").lock(exclusive=False):  # a backup is running
        assert_error(api.post("/backups/restore", {"filename": name, "async": True}, format="json"), 409)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert_error(api.post("/backups", {"async": True}, format="json"), 503, "pg_dump")
    assert_error(api.post("/backups/restore", {"filename": name, "async": True}, format="json"), 503, "psql")
    assert list(Backup.objects.values_list("filename", flat=True)) == [name]
    # Refusals are journaled like any other, in the name of who tried.
    refused = Operation.objects.filter(status="failed")
    assert refused.count() == 7
    assert set(refused.values_list("actor", flat=True)) == {"root", "viewer"}
    assert not Operation.objects.filter(status__in=["pending", "running"]).exists()


@pytest.mark.parametrize("failure", ["no python", "no log"])
def test_a_worker_that_cannot_be_started_leaves_nothing_pending(api, monkeypatch, settings, tmp_path, failure):
    execute("default", "CREATE TABLE brew (id integer)", "INSERT INTO brew VALUES (1)")
    name = api.post("/backups", {}, format="json").json()["filename"]
    if failure == "no python":
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    else:
        settings.BACKUP_JOB_LOG = str(tmp_path)  # a directory: the log cannot be opened
    message = assert_error(api.post("/backups", {"async": True}, format="json"), 503, "could not be started")
    failed = Backup.objects.get(status=BackupStatus.FAILED)
    assert failed.error == message
    assert_error(api.post("/backups/restore", {"filename": name, "async": True}, format="json"), 503, "worker")
    assert not Operation.objects.filter(status__in=["pending", "running"]).exists()
    failed_actions = Operation.objects.filter(status="failed").order_by("started_at").values_list("action", flat=True)
    assert list(failed_actions) == ["create", "restore"]
    assert fetch("default", "SELECT id FROM brew") == [(1,)]


# -- workers that die ---------------------------------------------------------------------------------


def test_a_killed_backup_worker_is_failed_when_polled_and_by_sync(api, backup_dir):
    execute("default", "CREATE TABLE brew (id integer)")
    blocker = TableBlocker()
    try:
        location = start_backup(api)["Location"]
        running = poll(api, location, lambda item: item["status"] == "running")
        wait_for_partial_file(backup_dir)
        pid = worker_pid(Backup.objects.get(filename=running["filename"]).worker)
        os.killpg(pid, signal.SIGKILL)  # the worker and its pg_dump
        wait_until_gone(pid)
    finally:
        blocker.release()
    failed = api.get(location).json()
    assert failed["status"] == "failed" and "Interrupted" in failed["error"]
    operation = Operation.objects.get(action="create")
    assert operation.status == "running"  # until someone looks: sync does
    result = services.sync_catalog(actor=services.Actor.command())
    operation.refresh_from_db()
    assert operation.status == "failed" and "Interrupted" in operation.message
    assert len(result.removed_partials) == 1 and list(backup_dir.iterdir()) == []


def test_a_restore_worker_killed_midway_changes_nothing(api, backup_dir, monkeypatch):
    """Only the worker dies (as under the OOM killer); psql, waiting on a lock, has read part
    of the dump. When it then reaches the end of its input it must roll back, not commit."""
    execute("default", "CREATE TABLE brew (id integer, notes text)")
    execute("default", "INSERT INTO brew SELECT i, md5(i::text) FROM generate_series(1, 50000) i")
    name = api.post("/backups", {}, format="json").json()["filename"]
    execute("default", "DELETE FROM brew WHERE id > 10", "CREATE TABLE hops (id integer)")
    monkeypatch.setenv("BACKUP_RESTORE_LOCK_TIMEOUT", "120")
    blocker = TableBlocker()
    try:
        response = start_restore(api, name, pre_restore_backup=False)
        (psql, _, _), *_ = wait_for_process("psql")
        pid = parent_of(psql)  # not from the journal: psql may hold its table locked by now
        os.kill(pid, signal.SIGKILL)
        wait_until_gone(pid)
    finally:
        blocker.release()
    wait_until_gone(psql, zombie_ok=True)
    assert fetch("default", "SELECT count(*) FROM brew") == [(10,)]
    assert fetch("default", "SELECT count(*) FROM hops") == [(0,)]
    failed = api.get(response["Location"]).json()
    assert failed["status"] == "failed" and "Interrupted" in failed["message"]


def test_sync_fails_operations_whose_process_died_and_jobs_never_started(api):
    """Every journaled operation names its process: a worker, or a web worker that its timeout
    killed in the middle of a synchronous restore."""
    long_ago = timezone.now() - timedelta(hours=2)
    no_such_process = f"{socket.gethostname()}:{2**22 + 1}"  # beyond any pid_max

    def operation(status, started_at, **details):
        return Operation.objects.create(
            action="restore", status=status, origin="api", started_at=started_at, details=details
        )

    dead = operation("running", timezone.now(), worker=no_such_process)
    never_started = operation("pending", long_ago)
    waiting = operation("pending", timezone.now())
    alive = operation("running", long_ago, worker=this_worker())
    elsewhere = operation("running", long_ago, worker="another-host:1")
    mark_interrupted()
    statuses = dict(Operation.objects.values_list("pk", "status"))
    assert statuses[dead.pk] == statuses[never_started.pk] == "failed"
    assert statuses[waiting.pk] == "pending"
    assert statuses[alive.pk] == statuses[elsewhere.pk] == "running"
    assert Operation.objects.get(pk=dead.pk).message.startswith("Interrupted")
