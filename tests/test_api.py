"""The REST API against the real PostgreSQL server: the spec's bodies, errors and access rules."""

import re
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from backups.engines import get_engine
from backups.models import Backup, BackupStatus, Operation

from .conftest import assert_error, create, execute, fetch, make_staff, read_manifest, token_client

pytestmark = pytest.mark.django_db(transaction=True)

NAME = re.compile(r"^hoppybrew_backup_\d{8}_\d{6}(-\d+)?\.sql\.gz$")
LIST_KEYS = ["filename", "timestamp", "created_at", "description", "size_bytes", "database_name", "database_host"]


# -- create -------------------------------------------------------------------------------------


def test_create_answers_the_spec_body_and_writes_file_and_manifest(api, backup_dir):
    response = api.post("/backups", {"description": "Pre-upgrade backup"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Backup created successfully"
    assert NAME.match(body["filename"])
    assert datetime.fromisoformat(body["timestamp"]).strftime("%Y%m%d_%H%M%S") in body["filename"]
    assert (backup_dir / body["filename"]).stat().st_size > 0
    manifest = read_manifest(backup_dir, body["filename"])
    assert manifest["description"] == "Pre-upgrade backup"
    assert manifest["status"] == "succeeded"
    assert manifest["engine"] == "postgresql"
    assert manifest["trigger"] == "manual"
    assert len(manifest["sha256"]) == 64
    assert manifest["size_bytes"] == (backup_dir / body["filename"]).stat().st_size


def test_create_without_a_body_and_with_a_trailing_slash(api):
    response = api.post("/backups/")
    assert response.status_code == 201
    assert Backup.objects.get(filename=response.json()["filename"]).description == ""


def test_two_backups_in_the_same_second_get_distinct_names(api):
    first, second = create(api), create(api)
    assert first != second
    assert {Backup.objects.get(filename=name).status for name in (first, second)} == {BackupStatus.SUCCEEDED}


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"description": "x" * 501}, "description"),
        ({"description": 42}, "description"),
        ({"description": "ok", "colour": "red"}, "colour"),
        ({"database": "nowhere"}, "not a valid choice"),
    ],
)
def test_create_refuses_bad_bodies(api, backup_dir, body, fragment):
    assert_error(api.post("/backups", body, format="json"), 400, fragment)
    assert not backup_dir.exists() or not any(backup_dir.iterdir())


def test_create_refuses_a_body_that_is_not_json(api):
    response = api.post("/backups", "{not json", content_type="application/json")
    assert_error(response, 400, "JSON")


def test_create_while_the_database_is_being_restored_is_409(api):
    with get_engine("default").lock(exclusive=True):
        assert_error(api.post("/backups", {}, format="json"), 409, "Another backup or restore")


def test_create_without_pg_dump_is_503_naming_the_tool(api, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert_error(api.post("/backups", {}, format="json"), 503, "pg_dump")


# -- list and show ------------------------------------------------------------------------------


def test_list_is_newest_first_with_the_spec_fields(api, settings):
    older = create(api, description="older")
    newer = create(api, description="newer")
    Backup.objects.filter(filename=older).update(
        created_at=Backup.objects.get(filename=newer).created_at.replace(year=2020)
    )
    response = api.get("/backups")
    assert response.status_code == 200
    items = response.json()
    assert [item["filename"] for item in items] == [newer, older]
    assert list(items[0])[: len(LIST_KEYS)] == LIST_KEYS
    assert re.fullmatch(r"\d{8}_\d{6}", items[0]["timestamp"])
    assert items[0]["database_name"] == connection.settings_dict["NAME"]  # test_hoppybrew + TEST_DB_SUFFIX
    assert items[0]["database_host"] == "127.0.0.1"
    assert items[0]["size_bytes"] > 0


def test_list_leaves_out_failed_attempts(api):
    good = create(api)
    Backup.objects.create(
        filename="hoppybrew_backup_20200101_000000.sql.gz",
        engine="postgresql",
        database_name="x",
        status=BackupStatus.FAILED,
        created_at=Backup.objects.get(filename=good).created_at,
    )
    assert [item["filename"] for item in api.get("/backups").json()] == [good]


def test_listing_an_unknown_database_is_400(api):
    assert_error(api.get("/backups", {"database": "nowhere"}), 400, "Unknown database 'nowhere'")
    assert_error(api.get("/backups", {"database": "x\x00y"}), 400, "Unknown database 'xy'")


def test_show_one_backup_and_404_for_an_unknown_one(api):
    name = create(api, description="one")
    body = api.get(f"/backups/{name}").json()
    assert body["filename"] == name and body["description"] == "one"
    assert_error(api.get("/backups/hoppybrew_backup_19990101_000000.sql.gz"), 404, "No backup named")


def fill_catalog(count):
    """``count`` restorable backups, newest first by name, each with a manifest of a few KB
    (table row counts), as a long-lived site's catalog holds."""
    start = timezone.now()
    manifest = {"table_rows": {f"table_{i}": i for i in range(100)}, "sha256": "0" * 64}
    Backup.objects.bulk_create(
        [
            Backup(
                filename=f"hoppybrew_backup_20240101_000000-{i + 2}.sql.gz",
                engine="postgresql",
                database_name="hoppybrew",
                status=BackupStatus.SUCCEEDED,
                created_at=start - timedelta(minutes=i),
                finished_at=start - timedelta(minutes=i) + timedelta(seconds=3),
                size_bytes=1000 + i,
                bytes_written=1000 + i,
                manifest=manifest,
            )
            for i in range(count)
        ],
        batch_size=2000,
    )


@pytest.mark.parametrize("size", [10, 10_000])
def test_the_list_takes_the_same_queries_at_any_size_and_never_loads_manifests(api, django_assert_num_queries, size):
    fill_catalog(size)
    # The token's user, then the backups.
    with django_assert_num_queries(2) as listing:
        response = api.get("/backups")
    assert len(response.json()) == size
    # The token's user, the count, then one page.
    with django_assert_num_queries(3) as paging:
        response = api.get("/backups?limit=5&offset=5")
    assert response.json()["count"] == size
    for query in listing.captured_queries + paging.captured_queries:
        assert "manifest" not in query["sql"]


def test_the_list_pages_only_when_a_limit_is_given(api):
    fill_catalog(12)
    names = [item["filename"] for item in api.get("/backups").json()]
    assert len(names) == 12
    page = api.get("/backups?limit=5&offset=5").json()
    assert list(page) == ["count", "next", "previous", "results"]
    assert page["count"] == 12
    assert [item["filename"] for item in page["results"]] == names[5:10]
    assert page["next"] == "http://testserver/backups?limit=5&offset=10"
    assert page["previous"] == "http://testserver/backups?limit=5"
    last = api.get(page["next"]).json()
    assert [item["filename"] for item in last["results"]] == names[10:] and last["next"] is None
    assert api.get("/backups?offset=5").json() == api.get("/backups").json()  # no limit: the array
    for bad in ("limit=0", "limit=ten", "limit=-1", "limit=5&offset=-5", "offset=x", "limit=1&limit=2"):
        assert_error(api.get(f"/backups?{bad}"), 400, bad.split("=")[0] if "offset" not in bad else "offset")
    assert api.get("/backups?limit=5&database=sqlite").json()["count"] == 0


def test_the_representation_shows_status_and_progress_after_the_spec_fields(api):
    name = create(api)
    body = api.get(f"/backups/{name}").json()
    assert list(body)[: len(LIST_KEYS)] == LIST_KEYS
    assert body["status"] == "succeeded" and body["error"] == ""
    assert body["bytes_written"] == body["size_bytes"] > 0
    assert body["elapsed_seconds"] == body["duration_seconds"]
    assert body["bytes_per_second"] == pytest.approx(body["size_bytes"] / body["duration_seconds"])


# -- restore ------------------------------------------------------------------------------------


def test_restore_answers_the_spec_body_and_brings_the_data_back(api):
    execute("default", "CREATE TABLE brew (id int PRIMARY KEY, name text)", "INSERT INTO brew VALUES (1, 'Pale Ale')")
    name = create(api)
    execute("default", "UPDATE brew SET name = 'Stout'")
    asked = timezone.now()
    response = api.post("/backups/restore", {"filename": name, "pre_restore_backup": False}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Database restored successfully"
    assert body["filename"] == name
    assert asked <= datetime.fromisoformat(body["timestamp"]) <= timezone.now()
    assert body["pre_restore_backup"] is None
    assert fetch("default", "SELECT name FROM brew") == [("Pale Ale",)]


def test_restore_takes_a_pre_restore_backup_and_names_it(api):
    name = create(api)
    body = api.post("/backups/restore", {"filename": name}, format="json").json()
    undo = Backup.objects.get(filename=body["pre_restore_backup"])
    assert undo.trigger == "pre-restore" and undo.status == BackupStatus.SUCCEEDED


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({}, 400, "filename"),
        ({"filename": 7}, 400, "filename"),
        ({"filename": "../../etc/passwd"}, 400, "not a backup filename"),
        ({"filename": "/etc/passwd"}, 400, "not a backup filename"),
        ({"filename": "hoppybrew_backup_19990101_000000.sql.gz"}, 404, "No backup named"),
        ({"filename": "x", "pre_restore_backup": "no"}, 400, "pre_restore_backup"),
    ],
)
def test_restore_refuses_bad_requests(api, body, status, fragment):
    assert_error(api.post("/backups/restore", body, format="json"), status, fragment)


def test_restore_during_a_backup_is_409_and_changes_nothing(api):
    execute("default", "CREATE TABLE brew (id int)", "INSERT INTO brew VALUES (1)")
    name = create(api)
    execute("default", "INSERT INTO brew VALUES (2)")
    with get_engine("default").lock(exclusive=False):  # what a running backup holds
        assert_error(api.post("/backups/restore", {"filename": name}, format="json"), 409, "running")
    assert fetch("default", "SELECT count(*) FROM brew") == [(2,)]


# -- delete -------------------------------------------------------------------------------------


def test_delete_answers_the_spec_body_and_removes_file_and_manifest(api, backup_dir):
    name = create(api)
    asked = timezone.now()
    response = api.delete(f"/backups/{name}")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["message"], body["filename"]) == ("success", "Backup deleted successfully", name)
    assert asked <= datetime.fromisoformat(body["timestamp"]) <= timezone.now()
    assert not (backup_dir / name).exists() and not (backup_dir / f"{name}.json").exists()
    assert not Backup.objects.filter(filename=name).exists()
    assert_error(api.delete(f"/backups/{name}"), 404)


# -- cleanup ------------------------------------------------------------------------------------


def test_cleanup_answers_the_spec_body(api, settings):
    settings.BACKUP_RETENTION_DAYS = 30
    settings.BACKUP_RETENTION_MIN_COUNT = 1
    old = create(api)
    Backup.objects.filter(filename=old).update(created_at=datetime(2020, 1, 1).astimezone())
    create(api)  # the newest, which is always kept
    asked = timezone.now()
    body = api.post("/backups/cleanup").json()
    assert body["deleted_count"] == 1
    assert body["deleted_files"] == [old]
    assert body["total_size_freed"] > 0
    assert body["retention_days"] == 30
    assert asked <= datetime.fromisoformat(body["cleanup_date"]) <= timezone.now()


# -- errors, methods, traversal -----------------------------------------------------------------


def test_wrong_methods_are_405_json(api):
    assert_error(api.put("/backups", {}, format="json"), 405, "PUT")
    assert_error(api.get("/backups/restore"), 405, "GET")
    assert_error(api.patch("/backups/cleanup", {}, format="json"), 405, "PATCH")
    assert_error(api.delete("/backups"), 405, "DELETE")
    assert_error(api.put("/backups/hoppybrew_backup_20241108_120000.sql.gz", {}, format="json"), 405, "PUT")


@pytest.mark.parametrize(
    "path, status",
    [
        # A decoded slash leaves the route: no view, a JSON 404.
        ("/backups/..%2f..%2fetc%2fpasswd", 404),
        ("/backups/%2e%2e%2fsecret.sql.gz", 404),
        ("/backups/%2Fetc%2Fpasswd", 404),
        # Anything else reaches the view, which refuses names that are not backup names.
        ("/backups/..%5c..%5cwindows", 400),
        ("/backups/notes.txt", 400),
        ("/backups/hoppybrew_backup_20241108_120000.sql.gz.json", 400),
        ("/backups/" + "a" * 300 + "_20241108_120000.sql.gz", 400),
    ],
)
def test_traversal_and_foreign_names_are_rejected_and_touch_nothing(api, backup_dir, tmp_path, path, status):
    backup_dir.mkdir()
    bystanders = [
        backup_dir / "notes.txt",
        backup_dir / "hoppybrew_backup_20241108_120000.sql.gz.json",
        tmp_path / "secret.sql.gz",
    ]
    for bystander in bystanders:
        bystander.write_text("keep me")
    for method in ("get", "delete"):
        assert_error(getattr(api, method)(path), status)
    assert all(bystander.read_text() == "keep me" for bystander in bystanders)


# -- who may call -------------------------------------------------------------------------------


def test_anonymous_callers_get_401(db):
    response = APIClient().get("/backups")
    assert_error(response, 401, "credentials")
    assert response["WWW-Authenticate"] == "Token"


def test_users_who_are_not_staff_get_403_and_their_attempts_are_journaled(django_user_model):
    user = django_user_model.objects.create_user("brewer", password="pw")
    client = token_client(user)
    assert_error(client.get("/backups"), 403, "backups.view_backup")
    assert_error(client.post("/backups", {}, format="json"), 403, "backups.add_backup")
    refused = Operation.objects.get(actor="brewer")
    assert (refused.action, refused.status, refused.origin) == ("create", "failed", "api")


def test_staff_need_the_permission_for_each_action(db):
    viewer = token_client(make_staff("viewer", "view_backup"))
    assert viewer.get("/backups").status_code == 200
    assert_error(viewer.post("/backups", {}, format="json"), 403, "backups.add_backup")
    assert_error(viewer.post("/backups/cleanup"), 403, "backups.delete_backup")
    assert_error(
        viewer.post("/backups/restore", {"filename": "hoppybrew_backup_20241108_120000.sql.gz"}, format="json"),
        403,
        "backups.restore_backup",
    )
    nobody = token_client(make_staff("nobody"))
    assert_error(nobody.get("/backups"), 403, "backups.view_backup")


def test_session_writes_need_csrf(superuser):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(superuser)
    assert client.get("/backups").status_code == 200
    assert_error(client.post("/backups", {}, format="json"), 403, "CSRF")


def test_an_api_create_is_journaled_with_who_and_where(api, superuser):
    name = create(api)
    operation = Operation.objects.get(action="create", filename=name)
    assert (operation.actor, operation.origin, operation.status) == ("root", "api", "succeeded")
    assert operation.client_address == "127.0.0.1"
