"""Restores that leave the live database (or most of it) alone, on PostgreSQL, SQLite and MariaDB:
a backup restored as a copy into a new database, and chosen models' rows restored into the live
database while every other table keeps its later rows, with foreign keys checked both ways."""

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections

from backups import services
from backups.exceptions import ForeignKeysWouldBreak, InvalidRequest
from backups.models import Backup, DatabaseCopy, Operation, Trigger
from tests.recoveryapp.models import Brewery, Ingredient, Recipe, Tasting

from .conftest import brew_recipes, database_exists, make_staff, names, read_copy, token_client

COMMAND = services.Actor.command()

ENGINES = [
    pytest.param("default", marks=pytest.mark.django_db(transaction=True, databases=["default"]), id="postgresql"),
    pytest.param("sqlite", marks=pytest.mark.django_db(transaction=True, databases=["default", "sqlite"]), id="sqlite"),
    pytest.param(
        "mariadb", marks=pytest.mark.django_db(transaction=True, databases=["default", "mariadb"]), id="mariadb"
    ),
]


@pytest.fixture
def alias(request):
    return request.param


@pytest.fixture
def brewing(alias):
    return brew_recipes(alias)


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_a_copy_holds_the_backup_and_leaves_the_live_database_untouched(alias, brewing, api, settings):
    Brewery.objects.using(alias).filter(pk=1).update(name="Renamed since")
    into = f"hb_copy{settings.SUFFIX}"
    response = api.post("/backups/restore", {"filename": brewing.filename, "into": into}, format="json")
    assert response.status_code == 201, response.content
    copy = DatabaseCopy.objects.get()
    assert response.json()["copy"]["name"] == copy.name
    if alias == "sqlite":  # a file next to the live one
        assert Path(copy.name) == Path(connections[alias].settings_dict["NAME"]).with_name(f"{into}.sqlite3")
    else:
        assert copy.name == into
    try:
        assert names(alias, Brewery) == ["Renamed since", "Malty"]
        assert not Backup.objects.filter(trigger=Trigger.PRE_RESTORE).exists()  # nothing live was replaced
        assert read_copy(alias, copy.name, "SELECT name FROM recoveryapp_brewery ORDER BY id") == [
            ("Hoppy",),
            ("Malty",),
        ]
        assert read_copy(alias, copy.name, "SELECT recipe_id, ingredient_id FROM recoveryapp_recipe_ingredients") == [
            (1, 1)
        ]

        assert [item["name"] for item in api.get("/backups/copies").json()] == [copy.name]
        output = io.StringIO()
        call_command("backups", "copies", stdout=output)
        assert copy.name in output.getvalue() and brewing.filename in output.getvalue()
        assert Operation.objects.get(action="restore-copy").status == "succeeded"
    finally:
        response = api.delete(f"/backups/copies/{into}")
    assert response.status_code == 200, response.content
    assert not database_exists(alias, copy.name)
    assert not DatabaseCopy.objects.exists()
    assert Operation.objects.get(action="drop-copy").status == "succeeded"


@pytest.mark.parametrize("alias", ENGINES[:1], indirect=True)
def test_a_copy_never_takes_a_configured_database_and_needs_its_own_permission(alias, brewing, api):
    live = connections[alias].settings_dict["NAME"]
    with pytest.raises(InvalidRequest, match="a copy never replaces a configured database"):
        services.restore_copy(brewing.filename, actor=COMMAND, into=live)
    for bad in ("x; DROP", "1abc", ""):
        with pytest.raises(InvalidRequest):
            services.restore_copy(brewing.filename, actor=COMMAND, into=bad)
    restorer = token_client(make_staff("restorer", "restore_backup", "view_backup"))
    response = restorer.post("/backups/restore", {"filename": brewing.filename, "into": "hb_nope"}, format="json")
    assert response.status_code == 403
    assert "backups.restore_copy" in response.json()["message"]
    refusal = Operation.objects.filter(action="restore-copy").latest("started_at")
    assert (refusal.status, refusal.actor) == ("failed", "restorer")
    assert not DatabaseCopy.objects.exists()


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_restoring_chosen_models_brings_back_their_rows_and_keeps_every_other_table(alias, brewing, api):
    # The morning's mistake: the stout is deleted, the pale ale loses its hop; meanwhile, other
    # tables get new rows that must survive.
    Recipe.objects.using(alias).filter(pk=2).delete()
    Recipe.objects.using(alias).get(pk=1).ingredients.clear()
    Brewery.objects.using(alias).create(id=3, name="Opened today")
    Ingredient.objects.using(alias).create(id=2, name="Mosaic")
    Tasting.objects.using(alias).filter(pk=1).update(note="tasted again today")

    response = api.post(
        "/backups/restore", {"filename": brewing.filename, "models": ["recoveryapp.Recipe"]}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["models"] == ["recoveryapp.Recipe"]
    assert body["rows"] == {"recoveryapp_recipe": 2, "recoveryapp_recipe_ingredients": 1}
    assert body["pre_restore_backup"] == Backup.objects.get(trigger=Trigger.PRE_RESTORE).filename

    assert names(alias, Recipe) == ["Pale Ale", "Stout"]
    assert list(Recipe.objects.using(alias).get(pk=1).ingredients.values_list("name", flat=True)) == ["Citra"]
    assert names(alias, Brewery) == ["Hoppy", "Malty", "Opened today"]
    assert names(alias, Ingredient) == ["Citra", "Mosaic"]
    assert Tasting.objects.using(alias).get().note == "tasted again today"
    # The sequences follow the restored rows: a new recipe gets a fresh id.
    assert Recipe.objects.using(alias).create(name="New", brewery_id=3).pk > 2
    journal = Operation.objects.get(action="restore-models")
    assert journal.status == "succeeded" and journal.details["rows"]["recoveryapp_recipe"] == 2


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_dangling_foreign_keys_are_refused_with_their_list_or_brought_along(alias, brewing):
    # Since the backup: a new recipe with a tasting (which a restore of recipes would orphan),
    # and the Malty brewery gone with its stout (which a restore of recipes would point at).
    newer = Recipe.objects.using(alias).create(id=3, name="Session IPA", brewery_id=1)
    Tasting.objects.using(alias).create(id=2, recipe=newer, note="new")
    Recipe.objects.using(alias).filter(pk=2).delete()
    Brewery.objects.using(alias).filter(pk=2).delete()

    with pytest.raises(InvalidRequest) as refused:
        services.restore_models(brewing.filename, actor=COMMAND, models=["recoveryapp.Recipe"])
    message = refused.value.message
    assert isinstance(refused.value, ForeignKeysWouldBreak)
    assert refused.value.related == ["recoveryapp.Brewery", "recoveryapp.Tasting"]
    assert sorted((finding.label, finding.column, finding.values) for finding in refused.value.findings) == [
        ("recoveryapp.Recipe", "brewery_id", (2,)),
        ("recoveryapp.Tasting", "recipe_id", (3,)),
    ]
    assert "recoveryapp.Tasting.recipe_id (recoveryapp_tasting) would point at recoveryapp.Recipe rows" in message
    assert "recoveryapp.Recipe.brewery_id (recoveryapp_recipe) would point at recoveryapp.Brewery rows" in message
    assert "rows that would not exist: 3" in message and "rows that would not exist: 2" in message
    # Nothing changed.
    assert names(alias, Recipe) == ["Pale Ale", "Session IPA"]
    assert Tasting.objects.using(alias).count() == 2

    result = services.restore_models(
        brewing.filename, actor=COMMAND, models=["recoveryapp.Recipe"], include_related=True, pre_restore_backup=False
    )
    assert result.models == ["recoveryapp.Brewery", "recoveryapp.Recipe", "recoveryapp.Tasting"]
    assert names(alias, Recipe) == ["Pale Ale", "Stout"]
    assert names(alias, Brewery) == ["Hoppy", "Malty"]
    assert list(Tasting.objects.using(alias).values_list("note", flat=True)) == ["bright"]


@pytest.mark.parametrize("alias", ENGINES[:1], indirect=True)
def test_model_restores_refuse_unknown_models_the_catalog_and_missing_permission(alias, brewing):
    for labels, text in (
        (["recoveryapp.Nope"], "no model or app"),
        (["backups.Backup"], "catalog is rebuilt"),
        ([], "Name the models"),
    ):
        with pytest.raises(InvalidRequest, match=text):
            services.restore_models(brewing.filename, actor=COMMAND, models=labels)
    restorer = token_client(make_staff("restorer", "restore_backup"))
    response = restorer.post(
        "/backups/restore", {"filename": brewing.filename, "models": ["recoveryapp.Recipe"]}, format="json"
    )
    assert response.status_code == 403 and "backups.restore_models" in response.json()["message"]
    assert names(alias, Recipe) == ["Pale Ale", "Stout"]
