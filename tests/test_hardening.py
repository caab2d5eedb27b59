"""Hardening: rate limits, the audit trail, secrets that never leak, private files, bad input that
changes nothing, and faults (killed tools, a full disk, a dead backend, an old pg_dump) that
lose no data."""

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.core.cache import cache
from django.db import connections

from backups import services
from backups.exceptions import DatabaseUnavailable, DumpFailed, ToolMissing
from backups.models import Backup, BackupStatus, Operation

from .conftest import (
    TableBlocker,
    assert_error,
    create,
    execute,
    fetch,
    make_staff,
    token_client,
    wait_for_process,
)

pytestmark = pytest.mark.django_db(transaction=True)
PROJECT = Path(__file__).resolve().parent.parent
COMMAND = services.Actor.command()


@pytest.fixture(autouse=True)
def fresh_throttle_history():
    cache.clear()


def all_cmdlines():
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes())
            except OSError:
                pass
    return lines


def in_thread(function, *args, **kwargs):
    outcome = {}

    def run():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001  (handed back to the test)
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


# -- access ------------------------------------------------------------------------------------


def test_creating_is_rate_limited_per_user(api, settings):
    settings.BACKUP_THROTTLE_CREATE = "2/hour"
    create(api)
    create(api)
    response = api.post("/backups", {}, format="json")
    assert_error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0
    assert Backup.objects.count() == 2
    other = token_client(make_staff("other", "add_backup"))  # limits are per user
    assert other.post("/backups", {}, format="json").status_code == 201


def test_restores_are_rate_limited_and_limits_can_be_turned_off(api, settings):
    settings.BACKUP_THROTTLE_RESTORE = "1/hour"
    unknown = {"filename": "hoppybrew_backup_19990101_000000.sql.gz"}
    assert api.post("/backups/restore", unknown, format="json").status_code == 404
    assert_error(api.post("/backups/restore", unknown, format="json"), 429)
    settings.BACKUP_THROTTLE_RESTORE = "off"
    assert api.post("/backups/restore", unknown, format="json").status_code == 404


def test_the_audit_trail_records_who_when_where_and_outcome_and_survives_restores(api, caplog):
    older = create(api)
    newer = create(api)
    api.delete(f"/backups/{newer}")
    api.post("/backups/cleanup", {"dry_run": True}, format="json")
    api.post("/backups/restore", {"filename": "hoppybrew_backup_19990101_000000.sql.gz"}, format="json")
    response = api.post("/backups/restore", {"filename": older, "pre_restore_backup": False}, format="json")
    assert response.status_code == 200
    # The restore rewrote backups_operation with its dump-time rows; the journal was carried over.
    rows = list(Operation.objects.order_by("started_at").values_list("action", "status", "origin", "actor", "filename"))
    assert rows == [
        ("create", "succeeded", "api", "root", older),
        ("create", "succeeded", "api", "root", newer),
        ("delete", "succeeded", "api", "root", newer),
        ("cleanup", "succeeded", "api", "root", ""),
        ("restore", "failed", "api", "root", "hoppybrew_backup_19990101_000000.sql.gz"),
        ("restore", "succeeded", "api", "root", older),
    ]
    assert set(Operation.objects.values_list("client_address", flat=True)) == {"127.0.0.1"}
    assert all(op.finished_at for op in Operation.objects.all())
    assert f"Backup restore succeeded (root via api): {older}" in caplog.text
    services.create_backup(actor=COMMAND)
    assert Operation.objects.filter(origin="command", action="create").count() == 1


# -- secrets and files ---------------------------------------------------------------------------


def test_the_password_never_appears_in_argv_logs_manifests_or_answers(api, settings, caplog, backup_dir, extra_alias):
    password = settings.TEST_DATABASE_PASSWORD
    execute("default", "CREATE TABLE brew (id integer)")
    blocker = TableBlocker()
    thread, outcome = in_thread(services.create_backup, actor=COMMAND)
    try:
        # The dump itself, not the 'pg_dump --version' that comes first without a password.
        (pid, argv, environ), *_ = wait_for_process("pg_dump", argument=b"--format=plain")
        assert f"PGPASSWORD={password}".encode() in environ.split(b"\0")  # it was given, in the environment
        assert not [line for line in all_cmdlines() if password.encode() in line]
    finally:
        blocker.release()
        thread.join(60)
    assert "error" not in outcome, outcome
    blocker = TableBlocker()  # psql waits on it, which leaves time to look at its command line
    restoring, outcome = in_thread(
        services.restore_backup, outcome["value"].filename, actor=COMMAND, pre_restore_backup=False
    )
    try:
        (_, _, environ), *_ = wait_for_process("psql")
        assert f"PGPASSWORD={password}".encode() in environ.split(b"\0")
        assert not [line for line in all_cmdlines() if password.encode() in line]
    finally:
        blocker.release()
        restoring.join(60)
    assert "error" not in outcome, outcome

    answers = [
        api.post("/backups", {"description": "secret check"}, format="json"),
        api.get("/backups"),
        api.post("/backups", {"database": extra_alias("down", PORT="1")}, format="json"),
    ]
    answers.append(api.get(f"/backups/{answers[0].json()['filename']}"))
    assert answers[2].status_code == 503
    for answer in answers:
        assert password not in answer.content.decode()
    assert password not in caplog.text
    for manifest in backup_dir.glob("*.json"):
        assert password not in manifest.read_text()
    assert not Backup.objects.filter(error__contains=password).exists()
    assert not Operation.objects.filter(message__contains=password).exists()


def test_backup_directory_and_files_are_private(api, backup_dir):
    name = create(api)
    assert backup_dir.stat().st_mode & 0o777 == 0o700
    assert (backup_dir / name).stat().st_mode & 0o777 == 0o600
    assert (backup_dir / f"{name}.json").stat().st_mode & 0o777 == 0o600


# -- bad input: a clear 4xx, and nothing changes -------------------------------------------------


def snapshot(backup_dir):
    files = sorted((p.name, p.stat().st_size) for p in backup_dir.iterdir()) if backup_dir.exists() else []
    return files, list(Backup.objects.values_list("filename", "status", "description"))


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("get", "/backups/hoppybrew_backup_20241108_120000%00.sql.gz", None),
        ("delete", "/backups/..%5C..%5Choppybrew_backup_20241108_120000.sql.gz", None),
        ("post", "/backups/restore", {"filename": "hoppybrew_backup_20241108_120000.sql.gz\x00"}),
        ("post", "/backups/restore", {"filename": "..\\..\\hoppybrew_backup_20241108_120000.sql.gz"}),
        ("post", "/backups/restore", {"filename": "a" * 5000}),
        ("post", "/backups/restore", {"filename": "hoppybrew_backup_20241108_120000.sql.gz.json"}),
        ("post", "/backups/restore", {"filename": ["hoppybrew_backup_20241108_120000.sql.gz"]}),
        ("post", "/backups/restore", {"filename": "x.sql.gz", "force": True}),
        ("post", "/backups/restore", ["not", "an", "object"]),
        ("post", "/backups/cleanup", {"dry_run": "yes"}),
        ("post", "/backups/cleanup", {"retention_days": 0}),
        ("post", "/backups", {"description": None}),
        ("post", "/backups", {"description": {"nested": 1}}),
        ("post", "/backups", "just a string"),
    ],
)
def test_bad_input_gets_a_4xx_json_error_and_changes_nothing(api, backup_dir, method, path, body):
    existing = create(api)
    before = snapshot(backup_dir)
    response = getattr(api, method)(path, body, format="json") if body is not None else getattr(api, method)(path)
    assert 400 <= response.status_code < 500, response.content
    assert response.json()["status"] == "error" and response.json()["message"]
    assert snapshot(backup_dir) == before
    assert Backup.objects.get(filename=existing).status == BackupStatus.SUCCEEDED


def test_a_huge_body_is_refused(api, backup_dir):
    before = snapshot(backup_dir)
    assert_error(api.post("/backups", {"description": "x" * 200_000}, format="json"), 413, "too large")
    assert snapshot(backup_dir) == before


def test_control_characters_are_dropped_and_markup_is_kept_as_text(api):
    raw = r'{"description": "<b>Pils</b>\u001b[31m\u0000 & <script>alert(1)</script>\u0007\ud800"}'
    response = api.post("/backups", raw, content_type="application/json")
    assert response.status_code == 201, response.content
    name = response.json()["filename"]
    body = api.get(f"/backups/{name}").json()
    assert body["description"] == "<b>Pils</b>[31m & <script>alert(1)</script>"
    assert api.get(f"/backups/{name}")["Content-Type"] == "application/json"


# -- faults ----------------------------------------------------------------------------------------


def test_pg_dump_killed_midway_leaves_no_backup_and_a_failed_record(backup_dir):
    execute("default", "CREATE TABLE brew (id integer)")
    blocker = TableBlocker()
    thread, outcome = in_thread(services.create_backup, actor=COMMAND)
    try:
        # The file is started once `pg_dump --version` has run: the pg_dump found next is the dump.
        deadline = time.monotonic() + 30
        while not list(backup_dir.glob(".*.partial")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (pid, _, _), *_ = wait_for_process("pg_dump")
        os.kill(pid, signal.SIGKILL)
        thread.join(60)
    finally:
        blocker.release()
    assert isinstance(outcome["error"], DumpFailed)
    assert "killed by signal SIGKILL" in outcome["error"].message
    row = Backup.objects.get()
    assert row.status == BackupStatus.FAILED and "SIGKILL" in row.error
    assert [p.name for p in backup_dir.iterdir()] == []


def test_an_unknown_database_role_gives_a_recorded_failure(extra_alias, backup_dir):
    """The server refuses the credentials (with trust authentication here, a role that does
    not exist is how that can happen)."""
    alias = extra_alias("stranger", USER="no_such_role_hoppybrew")
    with pytest.raises(DatabaseUnavailable) as raised:
        services.create_backup(actor=COMMAND, database=alias)
    assert 'role "no_such_role_hoppybrew" does not exist' in raised.value.message
    row = Backup.objects.get(database=alias)
    assert row.status == BackupStatus.FAILED and "does not exist" in row.error
    assert not backup_dir.exists() or list(backup_dir.iterdir()) == []


def test_an_unreachable_database_is_a_clear_503(api, extra_alias):
    response = api.post("/backups", {"database": extra_alias("down", PORT="1")}, format="json")
    message = assert_error(response, 503, "Cannot connect to the PostgreSQL database")
    assert "Traceback" not in message


def site_env(tmp_path, backup_dir, **extra):
    database = connections["default"].settings_dict
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DJANGO_SECRET_KEY": "test",
        "DATABASE_URL": f"postgres://{database['USER']}:{database['PASSWORD']}@127.0.0.1:5432/{database['NAME']}",
        "BACKUP_DIR": str(backup_dir),
        **extra,
    }


def test_a_full_disk_removes_the_partial_file_and_says_so(tmp_path, backup_dir):
    execute("default", "CREATE TABLE brew (id integer, notes text)")
    execute("default", "INSERT INTO brew SELECT i, md5(i::text) FROM generate_series(1, 20000) i")

    def small_files():  # the backup process may write files of at most 8 KB
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    result = subprocess.run(
        [sys.executable, "manage.py", "backups", "create"],
        cwd=PROJECT,
        # Python would write truncated .pyc files under this limit, without noticing.
        env=site_env(tmp_path, backup_dir, PYTHONDONTWRITEBYTECODE="1"),
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert result.returncode != 0
    assert "No space left on the backup storage" in result.stderr
    assert [p.name for p in backup_dir.iterdir()] == []
    assert Backup.objects.get().status == BackupStatus.FAILED


def test_a_backend_killed_midway_leaves_nothing_listed_after_sync(tmp_path, backup_dir):
    execute("default", "CREATE TABLE brew (id integer)")
    blocker = TableBlocker()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "backups", "create"],
        cwd=PROJECT,
        env=site_env(tmp_path, backup_dir),
        start_new_session=True,
    )
    try:
        wait_for_process("pg_dump")
        deadline = time.monotonic() + 30
        while not list(backup_dir.glob(".*.partial")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        blocker.release()
    assert Backup.objects.get().status == BackupStatus.RUNNING
    result = services.sync_catalog(actor=COMMAND)
    assert len(result.interrupted) == 1 and len(result.removed_partials) == 1
    assert Backup.objects.get().status == BackupStatus.FAILED
    assert list(backup_dir.iterdir()) == []
    assert services.list_backups(actor=COMMAND).count() == 0


def test_a_pg_dump_older_than_the_server_is_named_with_both_versions(tmp_path, monkeypatch, backup_dir):
    """An old pg_dump cannot be installed next to the real one here; a stand-in reports an
    older version and otherwise runs the real tool."""
    real = subprocess.run(["which", "pg_dump"], capture_output=True, text=True).stdout.strip()
    shim = tmp_path / "bin" / "pg_dump"
    shim.parent.mkdir()
    shim.write_text(
        f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 13.16"; exit 0; fi\nexec {real} "$@"\n'
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:{os.environ['PATH']}")
    server_major = fetch("default", "SHOW server_version")[0][0].split(".")[0]
    with pytest.raises(ToolMissing) as raised:
        services.create_backup(actor=COMMAND)
    assert f"pg_dump 13 cannot dump a PostgreSQL {server_major} server" in raised.value.message
    assert f"postgresql-client-{server_major}" in raised.value.message
    assert Backup.objects.get().status == BackupStatus.FAILED


def test_the_json_of_the_manifest_is_complete(api, backup_dir):
    name = create(api, description="complete")
    manifest = json.loads((backup_dir / f"{name}.json").read_text())
    for field in (
        "filename",
        "timestamp",
        "created_at",
        "description",
        "size_bytes",
        "database_name",
        "database_host",
        "sha256",
        "uncompressed_bytes",
        "duration_seconds",
        "engine",
        "server_version",
        "dump_tool_version",
        "format_version",
        "trigger",
        "status",
    ):
        assert manifest.get(field) not in (None, ""), field
