"""Restores that leave the live database (or most of it) alone, on PostgreSQL, SQLite and MariaDB:
a backup restored as a copy into a new database, and chosen models' rows restored into the live
database while every other table keeps its later rows, with foreign keys checked both ways."""

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from backups import services
from backups.engines import get_engine
from backups.exceptions import ForeignKeysWouldBreak, InvalidRequest
from backups.models import Backup, DatabaseCopy, Operation, Trigger
from tests.recoveryapp.models import Brewery, Ingredient, Recipe, Tasting

from .conftest import (
    DONE,
    ENGINES,
    brew_recipes,
    database_exists,
    job_worker_pids,
    make_staff,
    names,
    poll,
    read_copy,
    start_restore,
    token_client,
)

COMMAND = services.Actor.command()


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


# -- in the background ("async": true) ---------------------------------------------------------


@pytest.mark.parametrize("alias", ENGINES[:2], indirect=True)
def test_an_async_copy_is_polled_to_its_end_and_leaves_the_live_database_untouched(alias, brewing, api, settings):
    Brewery.objects.using(alias).filter(pk=1).update(name="Renamed since")
    into = f"hb_copy{settings.SUFFIX}"
    response = start_restore(api, brewing.filename, into=into)
    body = response.json()
    assert body["status"] == "pending" and body["message"].startswith("Restore into a new database started; poll")
    assert response["Location"] == f"http://testserver/backups/restores/{body['job_id']}"

    done = poll(api, response["Location"], lambda item: item["status"] in DONE)
    assert done["status"] == "succeeded", done["message"]
    copy = DatabaseCopy.objects.get()
    try:
        assert (done["action"], done["into"], done["database"], done["filename"]) == (
            "restore-copy",
            copy.name,
            alias,
            brewing.filename,
        )
        assert (done["models"], done["rows"], done["findings"], done["pre_restore_backup"]) == ([], {}, [], None)
        assert read_copy(alias, copy.name, "SELECT name FROM recoveryapp_brewery ORDER BY id") == [
            ("Hoppy",),
            ("Malty",),
        ]
        assert names(alias, Brewery) == ["Renamed since", "Malty"]
        assert not Backup.objects.filter(trigger=Trigger.PRE_RESTORE).exists()
        operation = Operation.objects.get(pk=body["job_id"])
        assert (operation.action, operation.actor, operation.details["copy"]) == ("restore-copy", "root", str(copy.pk))
        assert services.restore_progress(operation.pk).finished  # the worker recorded its phases
    finally:
        assert api.delete(f"/backups/copies/{into}").status_code == 200
    assert not database_exists(alias, copy.name)


@pytest.mark.parametrize("alias", ENGINES[:1], indirect=True)
def test_an_async_model_restore_is_polled_to_its_end(alias, brewing, api, model_workers):
    Recipe.objects.using(alias).filter(pk=2).delete()
    Brewery.objects.using(alias).create(id=3, name="Opened today")
    response = start_restore(api, brewing.filename, models=["recoveryapp.Recipe"])
    assert response.json()["message"].startswith("Restore of chosen models started; poll")

    done = poll(api, response["Location"], lambda item: item["status"] in DONE)
    assert done["status"] == "succeeded", done["message"]
    assert (done["action"], done["models"], done["rows"]) == (
        "restore-models",
        ["recoveryapp.Recipe"],
        {"recoveryapp_recipe": 2, "recoveryapp_recipe_ingredients": 1},
    )
    assert done["pre_restore_backup"] == Backup.objects.get(trigger=Trigger.PRE_RESTORE).filename
    assert (done["into"], done["findings"]) == (None, [])
    assert names(alias, Recipe) == ["Pale Ale", "Stout"]
    assert names(alias, Brewery) == ["Hoppy", "Malty", "Opened today"]


@pytest.mark.parametrize("alias", ENGINES[:1], indirect=True)
def test_an_async_model_restore_refused_for_its_foreign_keys_lists_them_when_polled(alias, brewing, api, model_workers):
    newer = Recipe.objects.using(alias).create(id=3, name="Session IPA", brewery_id=1)
    Tasting.objects.using(alias).create(id=2, recipe=newer, note="new")
    findings = [
        {
            "model": "recoveryapp.Tasting",
            "table": "recoveryapp_tasting",
            "column": "recipe_id",
            "target": "recoveryapp.Recipe",
            "values": [3],
            "more": False,
        }
    ]
    request = {"filename": brewing.filename, "models": ["recoveryapp.Recipe"], "pre_restore_backup": False}
    response = start_restore(api, **request)

    done = poll(api, response["Location"], lambda item: item["status"] in DONE)
    assert done["status"] == "failed" and "Restoring only these models would break foreign keys" in done["message"]
    assert done["findings"] == findings
    assert (done["models"], done["rows"]) == ([], {})
    assert names(alias, Recipe) == ["Pale Ale", "Stout", "Session IPA"]
    # Synchronously, the error answer lists them too.
    answer = api.post("/backups/restore", request, format="json")
    assert answer.status_code == 400 and answer.json()["findings"] == findings


@pytest.mark.parametrize("alias", ENGINES[:1], indirect=True)
def test_async_copies_and_model_restores_refuse_at_once_and_start_nothing(alias, brewing, api):
    restorer = token_client(make_staff("restorer", "restore_backup", "view_backup"))
    unknown = "hoppybrew_backup_19990101_000000.sql.gz"

    def refused(status, fragment, client=api, **body):
        body = {"filename": brewing.filename, **body, "async": True}
        response = client.post("/backups/restore", body, format="json")
        assert response.status_code == status, response.content
        assert fragment in response.json()["message"]

    refused(400, "a copy never replaces a configured database", into=connections[alias].settings_dict["NAME"])
    refused(400, "into: Letters, digits", into="1abc")
    refused(400, "no model or app", models=["recoveryapp.Nope"])
    refused(400, "catalog is rebuilt", models=["backups.Backup"])
    refused(400, "takes the whole backup", into="hb_nope", models=["recoveryapp.Recipe"])
    refused(403, "backups.restore_copy", client=restorer, into="hb_nope")
    refused(403, "backups.restore_models", client=restorer, models=["recoveryapp.Recipe"])
    refused(404, unknown, filename=unknown, into="hb_nope")
    refused(404, unknown, filename=unknown, into="hb_nope", models=["recoveryapp.Recipe"])  # 404 first, as ever
    with get_engine(alias).lock(exclusive=False):  # a backup is running
        refused(409, "running", models=["recoveryapp.Recipe"])
    assert job_worker_pids() == []
    assert not Operation.objects.filter(status__in=["pending", "running"]).exists()
    refusals = Operation.objects.filter(status="failed").values_list("action", flat=True)
    assert sorted(refusals) == ["restore-copy"] * 3 + ["restore-models"] * 4
    assert not DatabaseCopy.objects.exists()
    assert not Backup.objects.filter(trigger=Trigger.PRE_RESTORE).exists()

    # A copy of chosen models is refused by the service whoever asks: the API, or the command.
    response = api.post(
        "/backups/restore",
        {"filename": brewing.filename, "into": "hb_nope", "models": ["recoveryapp.Recipe"]},
        format="json",
    )
    assert response.status_code == 400 and "takes the whole backup" in response.json()["message"]
    with pytest.raises(CommandError, match="takes the whole backup"):
        call_command("backups", "restore", brewing.filename, "--into", "hb_nope", "--models", "recoveryapp.Recipe")
