"""Several destinations (BACKUP_DESTINATIONS): a directory, moto's S3 and a second directory.
One dump streams to all of them at once; a destination lost midway does not fail the others and
is reported; restores take the first good copy in order; each destination keeps its own
retention; health asks for copies."""

import hashlib
import json

import pytest
from django.urls import reverse

from backups import checks, services
from backups.models import Backup
from backups.services.health import evaluate_health

from .conftest import execute, fetch, fill_big_table, flip_byte, read_manifest

pytestmark = pytest.mark.django_db(transaction=True)
COMMAND = services.Actor.command()


@pytest.fixture
def three(s3, settings, tmp_path):
    """local (a directory), s3 (a moto bucket, off-site) and nas (a second directory), in that order."""
    bucket = s3.bucket()
    places = {"local": tmp_path / "local", "nas": tmp_path / "nas"}
    settings.BACKUP_DESTINATIONS = json.dumps(
        {
            "local": {"url": f"file://{places['local']}"},
            "s3": {"url": f"s3://{bucket}/hoppybrew", "offsite": True},
            "nas": {"url": f"file://{places['nas']}"},
        }
    )
    return bucket, places


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_dump_reaches_every_destination_and_a_lost_one_fails_alone(three, s3, settings, monkeypatch):
    bucket, places = three
    # Progress at every chunk, not once a second: the bucket must go while the dump streams,
    # however fast this machine dumps.
    monkeypatch.setattr("backups.services.backups.PROGRESS_INTERVAL", 0)
    fill_big_table(600_000)  # tens of megabytes of backup: S3 gets it in 5 MiB parts as it streams
    seen = []

    def lose_the_bucket_midway(*, written, final, **_progress):
        if not seen and not final:
            for upload in s3.unfinished_uploads(bucket):  # the upload under way, with parts sent
                s3.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            s3.client.delete_bucket(Bucket=bucket)
            s3.buckets.remove(bucket)
        seen.append((written, final))

    backup = services.create_backup(actor=COMMAND, progress=lose_the_bucket_midway)
    assert seen[0][1] is False and seen[0][0] < backup.size_bytes, "the bucket went while the dump was streaming"
    assert backup.status == "succeeded" and backup.locations == ["local", "nas"]
    assert backup.offsite_error.startswith("The copy to s3 failed:") and "NoSuch" in backup.offsite_error
    for directory in places.values():
        assert sha256(directory / backup.filename) == backup.sha256
        assert read_manifest(directory, backup.filename)["locations"] == ["local", "nas"]
    assert Backup.objects.get(pk=backup.pk).offsite_error == backup.offsite_error
    problems = evaluate_health().problems
    assert "The newest backup of database 'default' has no copy in s3; see its copy error" in problems[0]

    s3.client.create_bucket(Bucket=bucket)  # the bucket is back: sync makes the missing copy
    s3.buckets.append(bucket)
    result = services.sync_catalog(actor=COMMAND)
    assert result.copied_offsite == [backup.filename]
    backup.refresh_from_db()
    assert backup.locations == ["local", "s3", "nas"] and backup.offsite_error == ""
    assert hashlib.sha256(s3.read(bucket, f"hoppybrew/{backup.filename}")).hexdigest() == backup.sha256
    assert read_manifest(places["nas"], backup.filename)["locations"] == ["local", "s3", "nas"]
    assert evaluate_health().problems == []


def brew():
    execute("default", "CREATE TABLE brew (id integer PRIMARY KEY, name text)")
    execute("default", "INSERT INTO brew VALUES (1, 'Pale Ale'), (2, 'Stout')")


def test_a_restore_takes_the_first_good_copy_in_order(three, s3):
    bucket, places = three
    brew()
    backup = services.create_backup(actor=COMMAND)
    assert backup.locations == ["local", "s3", "nas"] and backup.offsite_error == ""
    flip_byte(places["local"] / backup.filename)
    s3.client.delete_object(Bucket=bucket, Key=f"hoppybrew/{backup.filename}")
    execute("default", "UPDATE brew SET name = 'Porter' WHERE id = 1")
    result = services.restore_backup(backup.filename, actor=COMMAND, pre_restore_backup=False)
    assert fetch("default", "SELECT name FROM brew ORDER BY id") == [("Pale Ale",), ("Stout",)]
    [warning] = [text for text in result.warnings if "restored from the copy" in text]
    assert "the copy in local does not match its checksum, the copy in s3 is missing" in warning
    assert f"restored from the copy in nas (file://{places['nas']})" in warning


def test_each_destination_keeps_copies_by_its_own_policy(s3, settings, tmp_path):
    bucket = s3.bucket()
    local = tmp_path / "local"
    settings.BACKUP_DESTINATIONS = {
        "local": {"url": f"file://{local}", "retention_days": 0, "min_count": 1},
        "s3": {"url": f"s3://{bucket}/hoppybrew", "offsite": True},
    }
    made = [services.create_backup(actor=COMMAND) for _ in range(3)]
    for day, backup in enumerate(made[:2], 1):  # two old ones, the first the oldest
        Backup.objects.filter(pk=backup.pk).update(created_at=f"2020-01-0{day}T00:00:00Z")
    settings.BACKUP_RETENTION_DAYS = "1"
    settings.BACKUP_RETENTION_MIN_COUNT = "2"  # s3 follows these: it keeps the newest two
    result = services.cleanup_backups(actor=COMMAND)
    assert [b.filename for b in result.deleted] == [made[0].filename]
    assert {b.filename: names for b, names in result.removed_copies} == {made[1].filename: ["local"]}
    assert result.kept[made[2].filename][0] == "local: one of the newest 1 successful backups"
    assert sorted(path.name for path in local.iterdir()) == [made[2].filename, f"{made[2].filename}.json"]
    assert s3.keys(bucket) == sorted(
        f"hoppybrew/{name}{suffix}" for name in (made[1].filename, made[2].filename) for suffix in ("", ".json")
    )
    kept = Backup.objects.get(pk=made[1].pk)
    assert kept.locations == ["s3"]
    assert json.loads(s3.read(bucket, f"hoppybrew/{made[1].filename}.json"))["locations"] == ["s3"]
    assert not Backup.objects.filter(pk=made[0].pk).exists()


def test_health_asks_for_enough_copies_and_one_off_site(settings, tmp_path):
    settings.BACKUP_DESTINATIONS = json.dumps(
        {"local": {"url": f"file://{tmp_path / 'a'}"}, "nas": {"url": f"file://{tmp_path / 'b'}", "verify": False}}
    )
    services.create_backup(actor=COMMAND)
    assert evaluate_health().problems == []
    settings.BACKUP_MIN_COPIES = "3"
    settings.BACKUP_REQUIRE_OFFSITE = "true"
    assert evaluate_health().problems == [
        "The newest backup of database 'default' has 2 of the 3 copies BACKUP_MIN_COPIES asks for.",
        "The newest backup of database 'default' has no off-site copy (BACKUP_REQUIRE_OFFSITE).",
    ]


def test_the_overview_counts_the_copies_in_every_destination(settings, tmp_path, admin_client):
    local, nas = tmp_path / "local", tmp_path / "nas"
    settings.BACKUP_DESTINATIONS = json.dumps({"local": {"url": f"file://{local}"}})
    older = services.create_backup(actor=COMMAND)
    settings.BACKUP_DESTINATIONS = json.dumps(
        {"local": {"url": f"file://{local}"}, "nas": {"url": f"file://{nas}", "offsite": True}}
    )
    newer = services.create_backup(actor=COMMAND)  # nas holds only this one
    use = services.overview(actor=COMMAND).storages
    assert [(place.location, place.where, place.offsite, place.count, place.size_bytes) for place in use] == [
        ("local", f"file://{local}", False, 2, older.size_bytes + newer.size_bytes),
        ("nas", f"file://{nas}", True, 1, newer.size_bytes),
    ]
    page = admin_client.get(reverse("admin:backups_backup_overview")).content.decode()
    assert f"<tr><td>nas (off-site)</td><td>file://{nas}</td><td>1</td>" in page
    assert f"<tr><td>local</td><td>file://{local}</td><td>2</td>" in page


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"local": {"url": "file:///srv/b"}', "BACKUP_DESTINATIONS: not valid JSON"),
        ('{"Local": {"url": "file:///srv/b"}}', "'Local' is not a destination name"),
        ('{"local": {"path": "/srv/b"}}', "destination 'local': unknown option 'path'"),
        ('{"local": {}}', "destination 'local': give either 'url'"),
        ('{"s3": {"url": "s3://AB/x"}}', "destination 's3': 'AB' is not an S3 bucket name"),
        ('{"local": {"url": "file:///srv/b", "min_count": 0}}', "destination 'local': must be at least 1"),
    ],
)
def test_bad_destinations_fail_the_settings_check_by_name(settings, value, message):
    settings.BACKUP_DESTINATIONS = value
    problems = [problem for problem in checks.check_settings(None) if "BACKUP_DESTINATIONS" in problem.msg]
    assert len(problems) == 1 and problems[0].id == "backups.E001" and message in problems[0].msg


def test_destinations_that_are_one_place_or_an_unknown_storage_are_refused(settings):
    settings.BACKUP_DESTINATIONS = {
        "local": {"url": "file:///srv/backups"},
        "again": {"url": "file:///srv/backups"},
        "azure": {"storage": "nowhere"},
    }
    messages = [problem.msg for problem in checks.check_destinations(None)]
    assert messages == [
        "BACKUP_DESTINATIONS: 'again' and 'local' are the same place; each copy must live elsewhere.",
        "BACKUP_DESTINATIONS: destination 'azure' names STORAGES['nowhere'], which is not defined.",
    ]
