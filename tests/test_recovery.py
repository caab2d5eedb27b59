"""Django-native recovery against real migrations (tests/recoveryapp: 0001 the first models, 0002
adds a field, 0003 fills it in a data migration, 0004 adds a model), on PostgreSQL, SQLite and
MariaDB: migration state in manifests, the restore preview, restore-then-migrate, the refusal of a
backup from newer code, and the backup before migrations."""

import importlib
import io
import json

import django
import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.urls import reverse

from backups import services
from backups.exceptions import InvalidRequest, MigrateFailed
from backups.models import Backup, Operation, Trigger
from tests.recoveryapp.models import Recipe, Tasting

from .conftest import execute, fetch, table_exists

COMMAND = services.Actor.command()
LATER = ["recoveryapp.0002_recipe_style", "recoveryapp.0003_fill_style", "recoveryapp.0004_tasting"]

ENGINES = [
    pytest.param("default", marks=pytest.mark.django_db(transaction=True, databases=["default"]), id="postgresql"),
    pytest.param("sqlite", marks=pytest.mark.django_db(transaction=True, databases=["default", "sqlite"]), id="sqlite"),
    pytest.param(
        "mariadb", marks=pytest.mark.django_db(transaction=True, databases=["default", "mariadb"]), id="mariadb"
    ),
]


def migrate(alias, target=None):
    args = ["recoveryapp", target] if target else ["recoveryapp"]
    call_command("migrate", *args, database=alias, interactive=False, verbosity=0)
    connections[alias].close()


@pytest.fixture
def alias(request):
    """The database of the test, with the test app back at its latest migration afterwards (the
    flush between transactional tests needs every model's table)."""
    name = request.param
    yield name
    execute(name, "DELETE FROM django_migrations WHERE app = 'recoveryapp' AND name LIKE '09%%'")
    migrate(name)


def at_first_migration(alias):
    """The test app at 0001, with a brewery and a recipe written as that schema knows them."""
    migrate(alias, "0001")
    execute(
        alias,
        "INSERT INTO recoveryapp_brewery (id, name) VALUES (1, 'Hoppy')",
        "INSERT INTO recoveryapp_recipe (id, name, brewery_id) VALUES (1, 'Pale Ale', 1)",
    )


def backup(alias):
    return services.create_backup(actor=COMMAND, database=alias)


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_an_old_backup_is_previewed_restored_and_migrated_forward(alias, api, admin_client, settings):
    settings.BACKUP_APP_VERSION = "2.0.3"
    at_first_migration(alias)
    old = backup(alias)
    assert old.manifest["migrations"]["recoveryapp"] == ["0001_initial"]
    assert "0002_recipe_style" not in old.manifest["migrations"]["recoveryapp"]
    assert "0001_initial" in old.manifest["migrations"]["auth"]
    assert (old.manifest["django_version"], old.manifest["app_version"]) == (django.get_version(), "2.0.3")
    shown = api.get(f"/backups/{old.filename}").json()
    assert shown["migrations"]["recoveryapp"] == ["0001_initial"] and shown["app_version"] == "2.0.3"

    migrate(alias)  # the deployment of the next release
    assert Recipe.objects.using(alias).get().style == "ale"
    Tasting.objects.using(alias).create(recipe_id=1, note="made after the backup")

    preview = services.restore_preview(old.filename, actor=COMMAND)
    assert (preview.migrations.state, preview.migrations.behind, preview.refused) == ("behind", LATER, None)
    assert "3 migrations will be applied after the restore" in preview.migrations.message
    body = api.get(f"/backups/{old.filename}/restore-preview").json()
    assert body["migrations"] == {
        "state": "behind",
        "behind": LATER,
        "ahead": [],
        "message": preview.migrations.message,
    }
    assert (body["filename"], body["database"]["alias"], body["refused"]) == (old.filename, alias, None)
    page = admin_client.get(reverse("admin:backups_backup_restore", args=[old.pk]))
    assert b"3 migrations will be applied after the restore" in page.content
    assert b"recoveryapp.0004_tasting" in page.content
    output = io.StringIO()
    call_command("backups", "show", old.filename, stdout=output)
    assert json.loads(output.getvalue())["migrations"]["recoveryapp"] == ["0001_initial"]

    result = services.restore_backup(old.filename, actor=COMMAND)
    assert result.migrations_applied == LATER
    assert Operation.objects.get(pk=result.operation.pk).details["migrations_applied"] == LATER
    # The site works: the column 0002 added exists, 0003 filled it, 0004's table is there, empty.
    assert Recipe.objects.using(alias).get().style == "ale"
    assert not Tasting.objects.using(alias).exists()
    Tasting.objects.using(alias).create(recipe_id=1, note="after the restore")
    assert services.restore_preview(result.pre_restore_backup.filename, actor=COMMAND).migrations.state == "equal"


@pytest.mark.parametrize("alias", ENGINES[:1], indirect=True)
def test_a_restore_without_migrate_leaves_the_schema_of_the_backup(alias, api):
    at_first_migration(alias)
    old = backup(alias)
    migrate(alias)
    response = api.post("/backups/restore", {"filename": old.filename, "migrate": False}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["migrations_applied"] == []
    assert not table_exists(alias, "recoveryapp_tasting")
    assert fetch(alias, "SELECT name FROM django_migrations WHERE app = 'recoveryapp'") == [("0001_initial",)]


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_a_backup_from_newer_code_is_refused_unless_forced(alias, api):
    execute(
        alias,
        "INSERT INTO django_migrations (app, name, applied) VALUES ('recoveryapp', '0901_future', '2030-01-01')",
    )
    newer = backup(alias)
    execute(alias, "DELETE FROM django_migrations WHERE name = '0901_future'")
    execute(alias, "INSERT INTO recoveryapp_brewery (id, name) VALUES (7, 'after the backup')")

    preview = services.restore_preview(newer.filename, actor=COMMAND)
    assert (preview.migrations.state, preview.migrations.ahead) == ("ahead", ["recoveryapp.0901_future"])
    with pytest.raises(InvalidRequest) as refused:
        services.restore_backup(newer.filename, actor=COMMAND)
    assert "recoveryapp.0901_future" in refused.value.message and "--force-ahead" in refused.value.message
    assert fetch(alias, "SELECT name FROM recoveryapp_brewery") == [("after the backup",)]
    assert api.get(f"/backups/{newer.filename}/restore-preview").json()["refused"] == preview.refused
    with pytest.raises(CommandError, match="0901_future"):
        call_command("backups", "restore", newer.filename, "--yes", stdout=io.StringIO())

    if alias == "default":
        response = api.post("/backups/restore", {"filename": newer.filename, "async": True}, format="json")
        assert response.status_code == 400 and "0901_future" in response.json()["message"]
        response = api.post("/backups/restore", {"filename": newer.filename, "force_ahead": True}, format="json")
        assert response.status_code == 200, response.content
    else:
        services.restore_backup(newer.filename, actor=COMMAND, force_ahead=True)
    assert fetch(alias, "SELECT name FROM recoveryapp_brewery") == []
    assert ("0901_future",) in fetch(alias, "SELECT name FROM django_migrations WHERE app = 'recoveryapp'")


@pytest.mark.parametrize("alias", ENGINES[:1], indirect=True)
def test_a_failing_migration_after_a_restore_says_which_and_keeps_the_restored_state(alias, monkeypatch):
    at_first_migration(alias)
    old = backup(alias)
    migrate(alias)

    fill = importlib.import_module("tests.recoveryapp.migrations.0003_fill_style")

    def broken(apps, schema_editor):
        raise RuntimeError("the data migration hit a bad row")

    with monkeypatch.context() as patch, pytest.raises(MigrateFailed) as failed:
        patch.setattr(fill.Migration.operations[0], "code", broken)
        services.restore_backup(old.filename, actor=COMMAND)
    error = failed.value
    assert error.failed_migration == "recoveryapp.0003_fill_style"
    assert error.applied == ["recoveryapp.0002_recipe_style"]
    pre_restore = Backup.objects.get(trigger=Trigger.PRE_RESTORE)
    assert error.pre_restore_backup == pre_restore.filename
    assert pre_restore.filename in error.message and "bad row" in error.message
    # Restored, and migrated up to the failure: the brewery of the backup, 0002's column.
    assert fetch(alias, "SELECT name, style FROM recoveryapp_recipe") == [("Pale Ale", "")]
    journal = Operation.objects.get(action="restore")
    assert journal.status == "failed" and journal.details["failed_migration"] == "recoveryapp.0003_fill_style"


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_backups_migrate_backs_up_first_only_when_there_is_something_to_migrate(alias):
    migrate(alias, "0003")
    output = io.StringIO()
    call_command("backups", "migrate", "--database", alias, "--noinput", stdout=output)
    before = Backup.objects.get(trigger=Trigger.PRE_MIGRATE)
    assert before.database == alias and "recoveryapp.0004_tasting" in before.description
    assert "0004_tasting" not in before.manifest["migrations"]["recoveryapp"]
    assert f"Backed up '{alias}' before migrating: {before.filename}" in output.getvalue()
    assert "Applied 1 migrations: recoveryapp.0004_tasting." in output.getvalue()
    assert table_exists(alias, "recoveryapp_tasting")

    output = io.StringIO()
    call_command("backups", "migrate", "--database", alias, stdout=output)
    assert "No migrations to apply" in output.getvalue()
    assert Backup.objects.filter(trigger=Trigger.PRE_MIGRATE).count() == 1
