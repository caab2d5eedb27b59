"""Backups in S3 and off-site copies, against a real S3 HTTP API (moto in server mode, started
by the suite): upload, list, download, restore, cleanup, failures that must leave nothing
behind, restores from the off-site copy, disaster recovery on a fresh database, and memory."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections

from backups import checks, services
from backups.exceptions import BackupDamaged, DumpFailed
from backups.models import Backup, BackupStatus
from backups.storage import get_storage

from .conftest import (
    as_superuser,
    execute,
    fetch,
    fill_big_table,
    flip_byte,
    new_database,
    read_manifest,
    superuser_url,
)

pytestmark = pytest.mark.django_db(transaction=True)
VERIFY_ADVICE = "consider 'manage.py backups verify --level restore' first."
COMMAND = services.Actor.command()
PROJECT = Path(__file__).resolve().parent.parent
PART_SIZE = 5 * 1024 * 1024  # django-storages' default AWS_S3_FILE_BUFFER_SIZE
ORIGINAL = [(1, "Pale Ale"), (2, "Stout")]


def brew():
    execute("default", "CREATE TABLE brew (id integer PRIMARY KEY, name text)")
    execute("default", "INSERT INTO brew VALUES (1, 'Pale Ale'), (2, 'Stout')")


def names():
    return fetch("default", "SELECT id, name FROM brew ORDER BY id")


@pytest.fixture
def bucket(s3, settings):
    """A fresh bucket that is the primary backup storage."""
    name = s3.bucket()
    settings.BACKUP_STORAGE_URL = f"s3://{name}/hoppybrew"
    return name


@pytest.fixture
def offsite(s3, settings):
    """Backups on the local disk (BACKUP_DIR), with off-site copies in a fresh bucket."""
    name = s3.bucket()
    settings.BACKUP_OFFSITE_STORAGE_URL = f"s3://{name}/offsite"
    return name


# -- S3 as the primary storage ------------------------------------------------------------------


def test_backups_go_to_the_bucket_and_are_listed_downloaded_and_restored(api, s3, bucket, backup_dir):
    brew()
    response = api.post("/backups", {"description": "to S3"}, format="json")
    assert response.status_code == 201, response.content
    filename = response.json()["filename"]
    assert s3.keys(bucket) == [f"hoppybrew/{filename}", f"hoppybrew/{filename}.json"]
    assert not backup_dir.exists()
    stored = s3.read(bucket, f"hoppybrew/{filename}")
    head = s3.client.head_object(Bucket=bucket, Key=f"hoppybrew/{filename}")
    # Not "Content-Encoding: gzip", which would make HTTP clients unpack the file on download.
    assert head["ContentType"] == "application/octet-stream" and "ContentEncoding" not in head
    manifest = json.loads(s3.read(bucket, f"hoppybrew/{filename}.json"))
    assert manifest["sha256"] == hashlib.sha256(stored).hexdigest()
    assert manifest["locations"] == ["primary"]

    [listed] = api.get("/backups").json()
    assert listed["filename"] == filename and listed["locations"] == ["primary"] and listed["offsite_error"] == ""

    download = api.get(f"/backups/{filename}/download", HTTP_ACCEPT="application/octet-stream")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == stored
    assert int(download["Content-Length"]) == len(stored)
    assert download["X-Backup-SHA256"] == manifest["sha256"]

    execute("default", "UPDATE brew SET name = 'Porter' WHERE id = 1")
    response = api.post("/backups/restore", {"filename": filename, "pre_restore_backup": False}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["warnings"] == [f"{filename} has never been verified; {VERIFY_ADVICE}"]
    assert names() == ORIGINAL


def test_a_failed_upload_leaves_no_object_and_no_unfinished_upload(s3, bucket):
    storage = get_storage()
    name = "hoppybrew_backup_20240101_000000.sql.gz"
    with pytest.raises(RuntimeError, match="dump failed"):
        with storage.writer(name) as stream:
            for _ in range(3):
                stream.write(os.urandom(PART_SIZE))
            # Parts went up while writing: nothing of this size waits in memory or on disk.
            [upload] = s3.unfinished_uploads(bucket)
            parts = s3.client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])["Parts"]
            assert len(parts) >= 2
            raise RuntimeError("dump failed")
    assert s3.keys(bucket) == []
    assert s3.unfinished_uploads(bucket) == []


def child_processes(command):
    """Pids of this process's children running ``command``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == os.getpid() and name == command:
            found.append(int(entry.name))
    return found


def test_a_dump_killed_midway_leaves_nothing_in_the_bucket(s3, bucket, settings, age_key):
    """pg_dump dies (the OOM killer, say) after parts of the backup have been uploaded."""
    settings.BACKUP_ENCRYPTION_RECIPIENTS = age_key[1]
    fill_big_table(250_000)
    killed, stop = [], threading.Event()

    def kill_pg_dump_after_the_first_part():
        while not stop.is_set():
            uploads = s3.unfinished_uploads(bucket)
            if uploads:
                upload = uploads[0]
                parts = s3.client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                if parts.get("Parts"):
                    for pid in child_processes("pg_dump"):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_pg_dump_after_the_first_part)
    watcher.start()
    try:
        with pytest.raises(DumpFailed, match="killed by signal SIGKILL"):
            services.create_backup(actor=COMMAND)
    finally:
        stop.set()
        watcher.join()
    assert killed
    assert s3.keys(bucket) == []
    assert s3.unfinished_uploads(bucket) == []
    assert Backup.objects.get().status == BackupStatus.FAILED
    assert services.list_backups(actor=COMMAND).count() == 0


def test_cleanup_and_delete_remove_the_objects(s3, bucket, settings):
    made = [services.create_backup(actor=COMMAND).filename for _ in range(3)]
    Backup.objects.filter(filename__in=made[:2]).update(created_at="2020-01-01T00:00:00Z")
    settings.BACKUP_RETENTION_DAYS = "1"
    settings.BACKUP_RETENTION_MIN_COUNT = "1"
    result = services.cleanup_backups(actor=COMMAND)
    assert sorted(backup.filename for backup in result.deleted) == sorted(made[:2])
    assert s3.keys(bucket) == [f"hoppybrew/{made[2]}", f"hoppybrew/{made[2]}.json"]
    services.delete_backup(made[2], actor=COMMAND)
    assert s3.keys(bucket) == []


def test_unfinished_uploads_of_killed_processes_are_aborted(s3, bucket):
    """A process killed with SIGKILL cannot abort its upload; its parts would be kept forever.
    (Sync spares uploads younger than a day; moto reports a fixed start time, so age 0 here.)"""

    def start_upload(key):
        upload = s3.client.create_multipart_upload(Bucket=bucket, Key=key)
        s3.client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024)

    start_upload("hoppybrew/hoppybrew_backup_20240101_000000.sql.gz")
    start_upload("hoppybrew/someone-elses-file.bin")
    assert get_storage().remove_partial_files(older_than_seconds=0) == ["hoppybrew_backup_20240101_000000.sql.gz"]
    assert [upload["Key"] for upload in s3.unfinished_uploads(bucket)] == ["hoppybrew/someone-elses-file.bin"]


def test_a_missing_bucket_is_a_storage_error_that_says_so(api, s3, settings):
    settings.BACKUP_STORAGE_URL = f"s3://{s3.bucket(create=False)}/hoppybrew"
    response = api.post("/backups", format="json")
    assert response.status_code == 503
    assert "NoSuchBucket" in response.json()["message"]
    assert services.list_backups(actor=COMMAND).count() == 0


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("s3://Bad_Bucket/prefix", "not an S3 bucket name"),
        ("gs://bucket/prefix", "unsupported scheme 'gs'"),
        ("s3://bucket/../etc", "not a usable key prefix"),
        ("s3://bucket/prefix?region=eu", "no query"),
        ("file://relative/path", "absolute path"),
    ],
)
def test_bad_storage_urls_fail_loudly_naming_the_variable(settings, url, fragment):
    settings.BACKUP_STORAGE_URL = url
    [error] = checks.check_settings(None)
    assert error.id == "backups.E001" and "BACKUP_STORAGE_URL" in error.msg and fragment in error.msg


def test_credentials_in_a_storage_url_are_refused_and_never_repeated(settings):
    settings.BACKUP_OFFSITE_STORAGE_URL = "s3://AKIAEXAMPLE:Sup3rSecret@bucket/prefix"
    [error] = checks.check_settings(None)
    assert "BACKUP_OFFSITE_STORAGE_URL" in error.msg and "AWS_SECRET_ACCESS_KEY" in error.msg
    assert "Sup3rSecret" not in error.msg and "AKIAEXAMPLE" not in error.msg


def test_an_off_site_storage_that_is_the_primary_one_is_an_error(settings, backup_dir):
    settings.BACKUP_OFFSITE_STORAGE_URL = f"file://{backup_dir}"
    assert [error.id for error in checks.check_offsite_storage(None)] == ["backups.E004"]
    settings.BACKUP_STORAGE_URL = "s3://hoppy-backups/site"
    settings.BACKUP_OFFSITE_STORAGE_URL = "s3://hoppy-backups/site/"
    assert [error.id for error in checks.check_offsite_storage(None)] == ["backups.E004"]
    settings.BACKUP_OFFSITE_STORAGE_URL = "s3://hoppy-backups-eu/site"
    assert checks.check_offsite_storage(None) == []


# -- off-site copies ----------------------------------------------------------------------------


def test_every_backup_is_copied_off_site_and_verified(api, s3, offsite, backup_dir):
    response = api.post("/backups", format="json")
    assert response.status_code == 201 and response.json()["warnings"] == []
    filename = response.json()["filename"]
    local = (backup_dir / filename).read_bytes()
    assert s3.keys(offsite) == [f"offsite/{filename}", f"offsite/{filename}.json"]
    assert s3.read(offsite, f"offsite/{filename}") == local
    for manifest in (
        json.loads((backup_dir / f"{filename}.json").read_text()),
        json.loads(s3.read(offsite, f"offsite/{filename}.json")),
    ):
        assert manifest["locations"] == ["primary", "offsite"]
        assert manifest["sha256"] == hashlib.sha256(local).hexdigest()
    [listed] = api.get("/backups").json()
    assert listed["locations"] == ["primary", "offsite"] and listed["offsite_error"] == ""


@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_a_restore_uses_the_off_site_copy_when_the_local_one_is_unusable(api, offsite, backup_dir, damage):
    brew()
    filename = services.create_backup(actor=COMMAND).filename
    if damage == "deleted":
        (backup_dir / filename).unlink()
    else:
        flip_byte(backup_dir / filename)
    execute("default", "UPDATE brew SET name = 'Porter' WHERE id = 1")
    response = api.post("/backups/restore", {"filename": filename, "pre_restore_backup": False}, format="json")
    assert response.status_code == 200, response.content
    [unverified, warning] = response.json()["warnings"]
    assert "never been verified" in unverified
    reason = "is missing" if damage == "deleted" else "does not match its checksum"
    assert f"the copy in primary {reason}" in warning and f"copy in offsite (s3://{offsite}/offsite)" in warning
    assert names() == ORIGINAL


def test_a_restore_with_both_copies_damaged_is_refused_and_changes_nothing(s3, offsite, backup_dir):
    brew()
    filename = services.create_backup(actor=COMMAND).filename
    (backup_dir / filename).write_bytes(b"garbage")
    s3.write(offsite, f"offsite/{filename}", b"more garbage")
    execute("default", "UPDATE brew SET name = 'Porter' WHERE id = 1")
    with pytest.raises(BackupDamaged, match="No copy of .* can be used"):
        services.restore_backup(filename, actor=COMMAND, pre_restore_backup=False)
    assert names() == [(1, "Porter"), (2, "Stout")]


def test_a_failed_off_site_copy_keeps_the_backup_shows_the_failure_and_sync_retries(api, s3, settings, backup_dir):
    offsite = s3.bucket(create=False)  # not there yet: the copy fails
    settings.BACKUP_OFFSITE_STORAGE_URL = f"s3://{offsite}/offsite"
    response = api.post("/backups", format="json")
    assert response.status_code == 201
    filename = response.json()["filename"]
    [warning] = response.json()["warnings"]
    assert warning.startswith("The copy to offsite failed:") and "NoSuchBucket" in warning
    [listed] = api.get("/backups").json()
    assert listed["filename"] == filename and listed["locations"] == ["primary"] and listed["offsite_error"] == warning
    assert (backup_dir / filename).exists()

    s3.client.create_bucket(Bucket=offsite)
    s3.buckets.append(offsite)
    call_command("backups", "sync")
    backup = Backup.objects.get(filename=filename)
    assert backup.locations == ["primary", "offsite"] and backup.offsite_error == ""
    assert s3.keys(offsite) == [f"offsite/{filename}", f"offsite/{filename}.json"]


def test_cleanup_and_delete_apply_to_both_storages(s3, offsite, settings, backup_dir):
    made = [services.create_backup(actor=COMMAND).filename for _ in range(3)]
    Backup.objects.filter(filename__in=made[:2]).update(created_at="2020-01-01T00:00:00Z")
    settings.BACKUP_RETENTION_DAYS = "1"
    settings.BACKUP_RETENTION_MIN_COUNT = "1"
    services.cleanup_backups(actor=COMMAND)
    assert sorted(path.name for path in backup_dir.iterdir()) == [made[2], f"{made[2]}.json"]
    assert s3.keys(offsite) == [f"offsite/{made[2]}", f"offsite/{made[2]}.json"]
    services.delete_backup(made[2], actor=COMMAND)
    assert list(backup_dir.iterdir()) == [] and s3.keys(offsite) == []


def test_after_losing_the_local_disk_sync_lists_the_off_site_backups(offsite, backup_dir):
    made = [services.create_backup(actor=COMMAND).filename for _ in range(2)]
    for path in backup_dir.iterdir():
        path.unlink()
    Backup.objects.all().delete()
    result = services.sync_catalog(actor=COMMAND)
    assert sorted(result.added) == sorted(made)
    # Listed from the off-site copies, and copied back to the new local disk from there.
    assert sorted(result.copied_offsite) == sorted(made)
    assert [backup.locations for backup in services.list_backups(actor=COMMAND)] == [["primary", "offsite"]] * 2
    for filename in made:
        assert read_manifest(backup_dir, filename)["locations"] == ["primary", "offsite"]
    (backup_dir / made[0]).unlink()
    backup, stream = services.open_backup(made[0], actor=COMMAND)  # downloads come from there too
    with stream:
        assert hashlib.sha256(stream.read()).hexdigest() == backup.sha256


# -- whole processes: disaster recovery and memory ----------------------------------------------


def manage(*args, env):
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def site_environment(tmp_path, database_url, **variables):
    """A deployment's environment: nothing but what the README tells an operator to set."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "hoppybrew_site.settings",
        "DJANGO_SECRET_KEY": "test",
        "DATABASE_URL": database_url,
        "BACKUP_DIR": str(tmp_path / "not-used"),
        **variables,
    }


def test_disaster_recovery_from_the_bucket_alone(s3, tmp_path, settings, age_key):
    """The README's walk-through: the server and its database are lost; a new server with an
    empty database, pointed at the same bucket and given the private key, gets the site back."""
    identity, public = age_key
    bucket = s3.bucket()
    database = f"hoppybrew_dr{settings.SUFFIX}"
    env = site_environment(
        tmp_path,
        superuser_url(database),
        BACKUP_STORAGE_URL=f"s3://{bucket}/hoppybrew",
        BACKUP_ENCRYPTION_RECIPIENTS=public,  # the old server had only the public key
        **s3.environment(),
    )
    with new_database(database):
        manage("migrate", "-v0", env=env)
        as_superuser(
            database, "CREATE TABLE brew (id integer PRIMARY KEY, name text)", "INSERT INTO brew VALUES (1, 'Pale Ale')"
        )
        first = manage("backups", "create", "--description", "first", env=env).split()[1]
        as_superuser(database, "INSERT INTO brew VALUES (2, 'Stout')")
        newest = manage("backups", "create", "--description", "newest", env=env).split()[1]

        # The disaster, then a new server: an empty database and the same bucket.
        as_superuser("postgres", f'DROP DATABASE "{database}"', f'CREATE DATABASE "{database}"')
        env["BACKUP_ENCRYPTION_IDENTITY_FILE"] = str(identity)
        manage("migrate", "-v0", env=env)
        assert "2 added" in manage("backups", "sync", env=env)
        listed = json.loads(manage("backups", "list", "--json", env=env))
        assert [item["filename"] for item in listed] == [newest, first]
        manage("backups", "restore", listed[0]["filename"], "--yes", env=env)

        assert as_superuser(database, "SELECT name FROM brew ORDER BY id") == [("Pale Ale",), ("Stout",)]
        listed = {item["filename"] for item in json.loads(manage("backups", "list", "--json", env=env))}
        assert {first, newest} < listed and len(listed) == 3  # and the pre-restore backup


# Measures in a small launcher: a child forked from this large test process would count this
# process's pages in its peak until it runs exec.
MEASURE = """
import resource, subprocess, sys
status = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], "w") as report:
    report.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(status)
"""


def peak_memory(args, env, tmp_path):
    """Run a command to its end; returns (its output, the peak resident memory in bytes of the
    command and of the processes it started)."""
    report = tmp_path / "peak.txt"
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(report), *args], cwd=PROJECT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, int(report.read_text()) * 1024


def test_peak_memory_stays_flat_for_a_database_many_times_the_upload_part_size(s3, bucket, tmp_path, age_key):
    """Backups stream: dump -> compress -> encrypt -> multipart upload, with no temporary file
    and no copy of the whole in memory; restores stream the object into one compressed
    temporary file and from there through decryption and decompression into psql. Four times
    the data costs no more memory either way.

    Both backups span several upload parts: the first part's buffer (AWS_S3_FILE_BUFFER_SIZE)
    is a fixed cost that a backup smaller than one part never pays.
    """
    test_database = connections["default"].settings_dict["NAME"]
    env = site_environment(
        tmp_path,
        superuser_url(test_database),
        BACKUP_STORAGE_URL=f"s3://{bucket}/hoppybrew",
        BACKUP_ENCRYPTION_RECIPIENTS=age_key[1],
        BACKUP_ENCRYPTION_IDENTITY_FILE=str(age_key[0]),
        **s3.environment(),
    )
    command = [sys.executable, "manage.py", "backups", "create"]
    fill_big_table(150_000)
    smaller_output, smaller_backup_peak = peak_memory(command, env, tmp_path)
    fill_big_table(450_000, first=150_001)
    larger_output, larger_backup_peak = peak_memory(command, env, tmp_path)
    smaller, larger = (Backup.objects.get(filename=text.split()[1]) for text in (smaller_output, larger_output))
    assert smaller.size_bytes > 2 * PART_SIZE
    assert larger.size_bytes > 8 * PART_SIZE and larger.size_bytes > 3.5 * smaller.size_bytes
    restore = [sys.executable, "manage.py", "backups", "restore", "--yes", "--no-pre-restore-backup"]
    _output, smaller_restore_peak = peak_memory([*restore, smaller.filename], env, tmp_path)
    _output, larger_restore_peak = peak_memory([*restore, larger.filename], env, tmp_path)
    assert fetch("default", "SELECT count(*) FROM big") == [(600_000,)]
    # Holding the larger backup, even compressed, would add the 33 MB it has over the smaller one.
    for doing, smaller_peak, larger_peak in (
        ("backup", smaller_backup_peak, larger_backup_peak),
        ("restore", smaller_restore_peak, larger_restore_peak),
    ):
        assert larger_peak - smaller_peak < 12 * 1024 * 1024, (
            f"{doing} peak memory {smaller_peak >> 20} MiB for {smaller.size_bytes} bytes, "
            f"{larger_peak >> 20} MiB for {larger.size_bytes} bytes"
        )
