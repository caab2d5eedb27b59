"""Several databases at once, through the API: a PostgreSQL one ("default") and an SQLite one,
each with its own backups, retention and restores, and restores refused across engines."""

from datetime import datetime

import pytest

from backups.models import Backup, Operation

from .conftest import execute, fetch

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])


def create(api, database):
    response = api.post("/backups", {"database": database}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["filename"]


def listed(api, database):
    response = api.get("/backups", {"database": database})
    assert response.status_code == 200
    return [item["filename"] for item in response.json()]


def names(alias):
    return [name for (name,) in fetch(alias, "SELECT name FROM brew ORDER BY id")]


def test_two_databases_keep_their_own_backups_retention_and_restores(api, settings):
    settings.BACKUP_RETENTION_DAYS = 30
    settings.BACKUP_RETENTION_MIN_COUNT = 1
    for alias in ("default", "sqlite"):
        execute(alias, "CREATE TABLE brew (id integer PRIMARY KEY, name varchar(100))")
        execute(alias, f"INSERT INTO brew VALUES (1, 'old {alias}')")
    old = {alias: create(api, alias) for alias in ("default", "sqlite")}
    for alias in ("default", "sqlite"):
        execute(alias, f"UPDATE brew SET name = 'new {alias}'")
    new = {alias: create(api, alias) for alias in ("default", "sqlite")}

    assert "_sqlite_" in new["sqlite"] and "_default_" not in new["default"]
    assert set(listed(api, "default")) == {old["default"], new["default"]}
    assert set(listed(api, "sqlite")) == {old["sqlite"], new["sqlite"]}
    item = api.get(f"/backups/{new['sqlite']}").json()
    assert (item["database"], item["engine"]) == ("sqlite", "sqlite")
    assert item["database_name"].endswith("test_main.sqlite3")

    # Everything is past the retention period: each database keeps its own newest backup.
    Backup.objects.update(created_at=datetime(2020, 1, 1).astimezone())
    Backup.objects.filter(filename__in=new.values()).update(created_at=datetime(2020, 1, 2).astimezone())
    body = api.post("/backups/cleanup").json()
    assert sorted(body["deleted_files"]) == sorted(old.values())
    assert listed(api, "default") == [new["default"]] and listed(api, "sqlite") == [new["sqlite"]]

    # A restore goes to the database the backup came from, and only there.
    for alias in ("default", "sqlite"):
        execute(alias, f"UPDATE brew SET name = 'changed {alias}'")
    response = api.post("/backups/restore", {"filename": new["sqlite"]}, format="json")
    assert response.status_code == 200, response.content
    assert names("sqlite") == ["new sqlite"] and names("default") == ["changed default"]
    response = api.post("/backups/restore", {"filename": new["default"]}, format="json")
    assert response.status_code == 200, response.content
    assert names("default") == ["new default"] and names("sqlite") == ["new sqlite"]
    pre_restore = Backup.objects.get(filename=response.json()["pre_restore_backup"])
    assert pre_restore.database == "default"


@pytest.mark.parametrize(
    "target",
    [
        "sqlite",
        pytest.param(
            "mariadb", marks=pytest.mark.django_db(transaction=True, databases=["default", "sqlite", "mariadb"])
        ),
    ],
)
def test_a_backup_is_refused_by_a_database_of_another_engine_before_anything_runs(api, backup_dir, target):
    execute("default", "CREATE TABLE brew (id integer PRIMARY KEY, name varchar(100))")
    execute(target, "CREATE TABLE brew (id integer PRIMARY KEY, name varchar(100))")
    execute(target, "INSERT INTO brew VALUES (1, 'untouched')")
    made = create(api, "default")
    files = sorted(path.name for path in backup_dir.iterdir())
    response = api.post("/backups/restore", {"filename": made, "target_database": target}, format="json")
    assert response.status_code == 400
    message = response.json()["message"]
    assert f"{made} is a postgresql backup and cannot be restored into the" in message
    assert "Nothing was changed" in message
    assert names(target) == ["untouched"]
    assert sorted(path.name for path in backup_dir.iterdir()) == files  # not even a pre-restore backup
    # Refused before it started: recorded for the audit trail, as failed, and nothing else.
    assert list(Operation.objects.filter(action="restore").values_list("status", flat=True)) == ["failed"]
