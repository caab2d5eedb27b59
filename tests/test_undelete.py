"""Undelete, on PostgreSQL, SQLite and MariaDB: objects deleted since a backup come back from it
with the objects that depended on them (as Django's deletion collector finds them), and only the
rows missing from the live database are inserted; rows there with other values are conflicts,
listed and not overwritten; rows whose parents are missing are refused with their list; a dry run
and a failure change nothing."""

import io

import pytest
from django.core.management import call_command

from backups import services
from backups.exceptions import InvalidRequest
from backups.models import Operation
from tests.recoveryapp.models import Brewery, Ingredient, Recipe, Tasting

from .conftest import ENGINES, execute, make_staff, names, token_client

COMMAND = services.Actor.command()
Hop = Recipe.ingredients.through  # the many-to-many table's rows


@pytest.fixture
def alias(request):
    return request.param


@pytest.fixture
def brewing(alias):
    """Two breweries; Hoppy's pale ale (with Citra, tasted once) and IPA (Citra and Mosaic,
    tasted once), Malty's stout (tasted once). Every row with its id, so that the answers can
    name them."""
    using = Brewery.objects.using(alias)
    using.bulk_create([Brewery(id=1, name="Hoppy"), Brewery(id=2, name="Malty")])
    Ingredient.objects.using(alias).bulk_create([Ingredient(id=1, name="Citra"), Ingredient(id=2, name="Mosaic")])
    Recipe.objects.using(alias).bulk_create(
        [
            Recipe(id=1, name="Pale Ale", brewery_id=1, style="ale"),
            Recipe(id=2, name="IPA", brewery_id=1, style="ipa"),
            Recipe(id=3, name="Stout", brewery_id=2, style="stout"),
        ]
    )
    Hop.objects.using(alias).bulk_create(
        [
            Hop(id=1, recipe_id=1, ingredient_id=1),
            Hop(id=2, recipe_id=2, ingredient_id=1),
            Hop(id=3, recipe_id=2, ingredient_id=2),
        ]
    )
    Tasting.objects.using(alias).bulk_create(
        [
            Tasting(id=1, recipe_id=1, note="bright"),
            Tasting(id=2, recipe_id=2, note="bitter"),
            Tasting(id=3, recipe_id=3, note="roasty"),
        ]
    )
    return services.create_backup(actor=COMMAND, database=alias)


def notes(alias):
    return dict(Tasting.objects.using(alias).values_list("id", "note"))


def hops(alias, recipe_id):
    return list(Hop.objects.using(alias).filter(recipe_id=recipe_id).order_by("id").values_list("id", flat=True))


def rewind_sequence(alias, model):
    """As a restore of an older backup leaves it: PostgreSQL's sequence behind the table's ids
    (the other engines number new rows from the rows themselves)."""
    if alias == "default":
        execute(alias, f"SELECT setval(pg_get_serial_sequence('{model._meta.db_table}', 'id'), 1, false)")


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_a_deleted_brewery_comes_back_with_its_recipes_and_later_rows_stay(alias, brewing, api):
    # The morning's mistake: Hoppy is deleted, and with it (CASCADE) its two recipes, their
    # tastings and their hops. Meanwhile the rest of the site goes on.
    Brewery.objects.using(alias).filter(pk=1).delete()
    assert names(alias, Recipe) == ["Stout"]
    Brewery.objects.using(alias).create(id=3, name="Opened today")
    Recipe.objects.using(alias).create(id=4, name="Porter", brewery_id=2)
    Tasting.objects.using(alias).create(id=4, recipe_id=4, note="new")
    Tasting.objects.using(alias).filter(pk=3).update(note="roasty, again")
    Ingredient.objects.using(alias).create(id=3, name="Simcoe")
    rewind_sequence(alias, Brewery)
    url = f"/backups/{brewing.filename}/undelete"
    expected = {
        "recoveryapp.Brewery": {"count": 1, "pks": [1]},
        "recoveryapp.Recipe": {"count": 2, "pks": [1, 2]},
        "recoveryapp.Recipe_ingredients": {"count": 3, "pks": [1, 2, 3]},
        "recoveryapp.Tasting": {"count": 2, "pks": [1, 2]},
    }

    preview = api.post(url, {"objects": {"recoveryapp.Brewery": [1]}, "dry_run": True}, format="json")
    assert preview.status_code == 200, preview.content
    body = preview.json()
    assert (body["dry_run"], body["inserted"], body["unchanged"], body["conflicts"]) == (True, expected, {}, [])
    assert names(alias, Brewery) == ["Malty", "Opened today"]  # the dry run changed nothing
    assert names(alias, Recipe) == ["Stout", "Porter"]

    response = api.post(url, {"objects": {"recoveryapp.Brewery": [1]}}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["dry_run"], body["inserted"], body["conflicts"]) == ("success", False, expected, [])
    assert sorted(body) == sorted(  # as README shows the answer
        ["status", "message", "filename", "timestamp", "dry_run", "inserted", "unchanged", "conflicts", "warnings"]
    )
    assert names(alias, Brewery) == ["Hoppy", "Malty", "Opened today"]
    assert names(alias, Recipe) == ["Pale Ale", "IPA", "Stout", "Porter"]
    assert (hops(alias, 1), hops(alias, 2)) == ([1], [2, 3])
    assert notes(alias) == {1: "bright", 2: "bitter", 3: "roasty, again", 4: "new"}
    assert names(alias, Ingredient) == ["Citra", "Mosaic", "Simcoe"]
    # The sequences are past the rows that came back: a new brewery gets a fresh id.
    assert Brewery.objects.using(alias).create(name="Newer").pk == 4
    journal = Operation.objects.filter(action="undelete").order_by("started_at")
    assert [(entry.status, entry.details["dry_run"]) for entry in journal] == [
        ("succeeded", True),
        ("succeeded", False),
    ]
    assert journal.last().details["inserted"]["recoveryapp.Tasting"] == [1, 2]


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_conflicts_are_listed_not_overwritten_and_the_dry_run_changes_nothing(alias, brewing, api):
    # Since the backup, the pale ale was renamed and lost its tasting; its hop is as it was.
    Recipe.objects.using(alias).filter(pk=1).update(name="Pale Ale v2")
    Tasting.objects.using(alias).filter(pk=1).delete()
    undelete = ["backups", "undelete", brewing.filename, "--objects", "recoveryapp.Recipe:1"]

    output = io.StringIO()
    call_command(*undelete, "--dry-run", stdout=output)
    assert output.getvalue().splitlines() == [
        f"Would insert into database '{alias}' from {brewing.filename}:",
        "  recoveryapp.Tasting: 1 (1)",
        "There already, the same: recoveryapp.Recipe_ingredients 1.",
        "Conflict, not overwritten: recoveryapp.Recipe 1 (differs in name)",
        "Dry run: nothing was changed.",
    ]
    assert notes(alias) == {2: "bitter", 3: "roasty"}

    output = io.StringIO()
    call_command(*undelete, "--yes", stdout=output)
    assert "  recoveryapp.Tasting: 1 (1)" in output.getvalue()
    assert notes(alias) == {1: "bright", 2: "bitter", 3: "roasty"}
    assert names(alias, Recipe) == ["Pale Ale v2", "IPA", "Stout"]  # the conflict kept its live values

    again = api.post(f"/backups/{brewing.filename}/undelete", {"objects": {"recoveryapp.Recipe": [1]}}, format="json")
    assert again.status_code == 200, again.content
    body = again.json()
    assert (body["inserted"], body["unchanged"]) == (
        {},
        {"recoveryapp.Recipe_ingredients": 1, "recoveryapp.Tasting": 1},
    )
    assert body["conflicts"] == [{"model": "recoveryapp.Recipe", "pk": 1, "differs": ["name"]}]


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_rows_whose_parents_are_gone_are_refused_with_the_objects_to_add(alias, brewing):
    # The pale ale was deleted, and its tasting with it: the tasting alone cannot come back.
    Recipe.objects.using(alias).filter(pk=1).delete()
    with pytest.raises(InvalidRequest) as refused:
        services.undelete(brewing.filename, actor=COMMAND, objects={"recoveryapp.Tasting": [1]})
    message = refused.value.message
    assert "recoveryapp.Tasting.recipe_id (recoveryapp_tasting) would point at recoveryapp.Recipe rows" in message
    assert "rows that would not exist: 1" in message and "add recoveryapp.Recipe:1 to the objects" in message
    assert notes(alias) == {2: "bitter", 3: "roasty"}

    with pytest.raises(InvalidRequest, match=r"Not in the backup: recoveryapp\.Recipe 99\. Nothing was changed"):
        services.undelete(brewing.filename, actor=COMMAND, objects={"recoveryapp.Recipe": [1, 99]})
    assert names(alias, Recipe) == ["IPA", "Stout"]

    result = services.undelete(
        brewing.filename, actor=COMMAND, objects={"recoveryapp.Tasting": [1], "recoveryapp.Recipe": [1]}
    )
    assert result.inserted == {
        "recoveryapp.Recipe": [1],
        "recoveryapp.Recipe_ingredients": [1],
        "recoveryapp.Tasting": [1],
    }
    assert notes(alias) == {1: "bright", 2: "bitter", 3: "roasty"}


@pytest.fixture
def unique_notes(alias):
    """A unique index on tasting notes, made after the backup: an insert can now clash with it."""
    execute(alias, "CREATE UNIQUE INDEX hb_unique_note ON recoveryapp_tasting (note)")
    yield
    drop = "DROP INDEX hb_unique_note" + (" ON recoveryapp_tasting" if alias == "mariadb" else "")
    execute(alias, drop)


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_a_failed_insert_changes_nothing(alias, brewing, unique_notes):
    # The pale ale was deleted; then someone wrote its tasting's very note on the stout.
    Recipe.objects.using(alias).filter(pk=1).delete()
    Tasting.objects.using(alias).filter(pk=3).update(note="bright")
    with pytest.raises(InvalidRequest) as failed:
        services.undelete(brewing.filename, actor=COMMAND, objects={"recoveryapp.Recipe": [1]})
    assert failed.value.message.startswith("The recoveryapp.Tasting rows could not be inserted (")
    assert failed.value.message.endswith("a row there holds the same unique values. Nothing was changed.")
    # The recipe and its hop were inserted before the tasting failed: rolled back with it.
    assert names(alias, Recipe) == ["IPA", "Stout"]
    assert hops(alias, 1) == []
    assert Operation.objects.get(action="undelete").status == "failed"


@pytest.mark.parametrize("alias", ENGINES[:1], indirect=True)
def test_undelete_needs_restore_models_and_refuses_what_it_cannot_bring_back(alias, brewing):
    Brewery.objects.using(alias).filter(pk=2).delete()
    url = f"/backups/{brewing.filename}/undelete"
    body = {"objects": {"recoveryapp.Brewery": [2]}}
    restorer = token_client(make_staff("restorer", "restore_backup", "view_backup"))
    response = restorer.post(url, body, format="json")
    assert response.status_code == 403 and "backups.restore_models" in response.json()["message"]
    refusal = Operation.objects.get(action="undelete")
    assert (refusal.status, refusal.actor) == ("failed", "restorer")
    assert names(alias, Brewery) == ["Hoppy"]

    undeleter = token_client(make_staff("undeleter", "restore_models"))
    for objects, text in (
        ({"recoveryapp": [1]}, "Name a model, as app.Model"),
        ({"recoveryapp.Nope": [1]}, "no model or app"),
        ({"backups.Backup": [1]}, "catalog is rebuilt"),
        ({"recoveryapp.Brewery": ["one"]}, "'one' is not a primary key of recoveryapp.Brewery"),
        ({"recoveryapp.Brewery": [2**40]}, "is not a primary key of recoveryapp.Brewery"),
    ):
        response = undeleter.post(url, {"objects": objects}, format="json")
        assert response.status_code == 400 and text in response.json()["message"], response.content
    for wrong in ({"objects": {}}, {"objects": {"recoveryapp.Brewery": []}}, {**body, "dry": True}):
        assert undeleter.post(url, wrong, format="json").status_code == 400
    assert (
        undeleter.post("/backups/hoppybrew_backup_20200101_000000.sql.gz/undelete", body, format="json").status_code
        == 404
    )

    response = undeleter.post(url, body, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["inserted"] == {
        "recoveryapp.Brewery": {"count": 1, "pks": [2]},
        "recoveryapp.Recipe": {"count": 1, "pks": [3]},
        "recoveryapp.Tasting": {"count": 1, "pks": [3]},
    }
    assert names(alias, Brewery) == ["Hoppy", "Malty"]
