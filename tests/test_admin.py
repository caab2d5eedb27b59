"""The admin, through Django's test client, against the real PostgreSQL server and real files:
every button, link and action, each permission allowed and refused, errors as admin messages."""

from datetime import UTC, datetime

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.utils import quote
from django.db import connection
from django.test import Client
from django.urls import reverse

from backups import services
from backups.formatting import human_size
from backups.models import Backup, BackupStatus, Operation, Origin

from .conftest import execute, fetch, make_staff, read_manifest

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:backups_backup_changelist")
CREATE = reverse("admin:backups_backup_create")
SYNC = reverse("admin:backups_backup_sync")
HISTORY = reverse("admin:backups_restorehistory_changelist")
AUDIT_LOG = reverse("admin:backups_operation_changelist")
EVERYTHING_BUT_RESTORE = ("view_backup", "add_backup", "change_backup", "delete_backup", "download_backup")
MARKUP = '<script>alert("owned")</script><b>bold</b>'


def login(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def admin(superuser):
    return login(superuser)


def url(name, backup):
    return reverse(f"admin:backups_backup_{name}", args=[quote(backup.pk)])


def messages_of(response):
    return [(message.level_tag, str(message)) for message in response.context["messages"]]


def create(client, description=""):
    """Press "Create backup"; returns the new catalog row."""
    response = client.post(CREATE, {"description": description}, follow=True)
    [(level, text)] = messages_of(response)
    assert level == "success", text
    return Backup.objects.get(filename=text.split()[1])


def database_name():
    return connection.settings_dict["NAME"]


def restore(client, backup, typed=None):
    return client.post(url("restore", backup), {"confirm_database": database_name() if typed is None else typed})


def delete_selected(client, backups):
    return client.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [backup.pk for backup in backups], "post": "yes"},
        follow=True,
    )


# -- the list -----------------------------------------------------------------------------------


def test_list_shows_each_backup_newest_first_in_local_time(admin, settings):
    settings.TIME_ZONE = "Asia/Tokyo"
    older, newer = create(admin, "older"), create(admin, "newer")
    older.created_at = datetime(2020, 1, 2, 12, 30, 5, tzinfo=UTC)
    older.save()
    response = admin.get(CHANGELIST)
    assert response.status_code == 200
    assert [backup.filename for backup in response.context["cl"].result_list] == [newer.filename, older.filename]
    page = response.content.decode()
    for cell in (
        '<td class="field-created">2020-01-02 21:30:05 JST</td>',
        f'<td class="field-size">{human_size(older.size_bytes)}</td>',
        '<td class="field-status_column">succeeded</td>',
        '<td class="field-trigger">manual</td>',
        '<td class="field-database">default</td>',
        ">\nolder</textarea>",
        f'<a href="{url("restore", older)}">Restore…</a> | <a href="{url("download", older)}">Download</a>',
    ):
        assert cell in page, cell


def test_filters_search_and_date_hierarchy(admin):
    first, second = create(admin, "Before the v2.0 upgrade"), create(admin, "nightly")
    Backup.objects.filter(pk=first.pk).update(created_at=first.created_at.replace(year=2020))
    Backup.objects.filter(pk=second.pk).update(status=BackupStatus.MISSING)

    def listed(query):
        response = admin.get(CHANGELIST, query)
        assert response.status_code == 200
        return {backup.filename for backup in response.context["cl"].result_list}

    assert listed({"q": "upgrade"}) == {first.filename}
    assert listed({"q": second.filename}) == {second.filename}
    assert listed({"status": "missing"}) == {second.filename}
    assert listed({"trigger": "manual", "database": "default"}) == {first.filename, second.filename}
    assert listed({"created_at__year": "2020"}) == {first.filename}


def test_the_standard_add_form_does_not_exist(admin):
    response = admin.get(CHANGELIST)
    assert reverse("admin:backups_backup_add") not in response.content.decode()
    assert admin.get(reverse("admin:backups_backup_add")).status_code == 403


# -- create and sync ----------------------------------------------------------------------------


def test_create_button_makes_a_backup_and_names_it(admin, backup_dir):
    response = admin.post(CREATE, {"description": "Before the v2.0 upgrade"}, follow=True)
    [(level, text)] = messages_of(response)
    backup = Backup.objects.get()
    assert level == "success"
    assert text == f"Backup {backup.filename} created ({human_size(backup.size_bytes)})."
    assert backup.description == "Before the v2.0 upgrade" and backup.status == BackupStatus.SUCCEEDED
    assert read_manifest(backup_dir, backup.filename)["description"] == "Before the v2.0 upgrade"
    operation = Operation.objects.get(action="create")
    assert (operation.origin, operation.actor, operation.client_address) == (Origin.ADMIN, "root", "127.0.0.1")


def test_create_button_reports_the_service_error(admin, monkeypatch, tmp_path):
    response = admin.post(CREATE, {"description": "x" * 501}, follow=True)
    assert messages_of(response) == [
        ("error", "The backup was not created: The description is too long: at most 500 characters.")
    ]
    monkeypatch.setenv("PATH", str(tmp_path))
    [(level, text)] = messages_of(admin.post(CREATE, {}, follow=True))
    assert level == "error" and "pg_dump" in text
    assert not Backup.objects.filter(status=BackupStatus.SUCCEEDED).exists()


def test_create_needs_post_and_csrf(superuser):
    client = Client(enforce_csrf_checks=True)
    client.force_login(superuser)
    assert client.get(CREATE).status_code == 405
    assert client.post(CREATE, {"description": "forged"}).status_code == 403
    assert client.post(SYNC).status_code == 403
    assert not Backup.objects.exists()


def test_create_and_sync_buttons_are_hidden_and_refused_without_add_backup(backup_dir):
    viewer = login(make_staff("viewer", "view_backup", "change_backup", "delete_backup"))
    page = viewer.get(CHANGELIST).content.decode()
    assert 'id="create-backup-form"' not in page and 'id="sync-backups-form"' not in page
    assert viewer.post(CREATE, {"description": "sneaky"}).status_code == 403
    assert viewer.post(SYNC).status_code == 403
    assert not Backup.objects.exists() and not Operation.objects.exists()
    creator = login(make_staff("creator", "view_backup", "add_backup"))
    page = creator.get(CHANGELIST).content.decode()
    assert 'id="create-backup-form"' in page and 'id="sync-backups-form"' in page


def test_sync_button_reports_what_it_found(admin, backup_dir):
    backup = create(admin)
    Backup.objects.all().delete()
    response = admin.post(SYNC, follow=True)
    assert messages_of(response) == [
        (
            "success",
            "Catalog synchronised with the storage: 1 added, 0 updated, 0 missing, 0 interrupted, "
            "0 temporary files removed.",
        )
    ]
    assert Backup.objects.get().filename == backup.filename


# -- the description ----------------------------------------------------------------------------


def changelist_form(backups, descriptions):
    data = {
        "form-TOTAL_FORMS": str(len(backups)),
        "form-INITIAL_FORMS": str(len(backups)),
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for number, (backup, description) in enumerate(zip(backups, descriptions, strict=True)):
        data[f"form-{number}-id"] = str(backup.pk)
        data[f"form-{number}-description"] = description
    return data


def test_description_edited_in_the_list_changes_the_manifest_too(admin, backup_dir):
    backup = create(admin, "first words")
    response = admin.post(CHANGELIST, changelist_form([backup], ["better words"]), follow=True)
    assert messages_of(response) == [("success", "1 backup was changed successfully.")]
    assert Backup.objects.get().description == "better words"
    assert read_manifest(backup_dir, backup.filename)["description"] == "better words"


def test_description_is_the_only_field_the_change_form_saves(admin, backup_dir):
    backup = create(admin, "first words")
    response = admin.post(
        url("change", backup), {"description": "second words", "status": "failed", "filename": "x"}, follow=True
    )
    assert response.status_code == 200
    [(level, text)] = messages_of(response)
    assert level == "success" and backup.filename in text
    saved = Backup.objects.get()
    assert (saved.description, saved.status, saved.filename) == ("second words", "succeeded", backup.filename)
    assert read_manifest(backup_dir, backup.filename)["description"] == "second words"
    assert LogEntry.objects.get().object_repr == backup.filename


def test_a_description_that_cannot_be_saved_says_so_and_claims_nothing(admin, backup_dir):
    backup = create(admin, "first words")
    # The manifest's name taken by a directory: the storage cannot replace it.
    manifest = backup_dir / f"{backup.filename}.json"
    manifest.unlink()
    (manifest / "blocker").mkdir(parents=True)
    response = admin.post(url("change", backup), {"description": "lost words"}, follow=True)
    [(level, text)] = messages_of(response)
    assert level == "error"
    assert text.startswith(f"The description of {backup.filename} was not saved: The backup storage (BACKUP_DIR: ")
    assert Backup.objects.get().description == "first words"
    assert not LogEntry.objects.exists()
    response = admin.post(CHANGELIST, changelist_form([backup], ["lost again"]), follow=True)
    assert [level for level, _ in messages_of(response)] == ["error"]


def test_viewers_see_the_description_but_cannot_change_it(admin):
    backup = create(admin, "read me")
    viewer = login(make_staff("viewer", "view_backup"))
    response = viewer.get(url("change", backup))
    assert response.status_code == 200
    assert "read me" in response.content.decode() and "<textarea" not in response.content.decode()
    assert "<textarea" not in viewer.get(CHANGELIST).content.decode()
    assert viewer.post(url("change", backup), {"description": "changed"}).status_code == 403
    assert Backup.objects.get().description == "read me"


# -- restore ------------------------------------------------------------------------------------


@pytest.fixture
def brew(admin):
    """A table with a row, a backup of it, and then a change the restore should undo."""
    execute("default", "CREATE TABLE brew (id int PRIMARY KEY, name text)", "INSERT INTO brew VALUES (1, 'Pale Ale')")
    backup = create(admin, "with Pale Ale")
    execute("default", "UPDATE brew SET name = 'Stout'")
    return backup


def test_confirmation_page_says_what_is_overwritten_and_by_what(admin, brew):
    response = admin.get(url("restore", brew))
    assert response.status_code == 200
    target = response.context["database"]
    assert (target["name"], target["host"]) == (database_name(), "127.0.0.1")
    page = response.content.decode()
    for fact in (
        target["name"],
        "127.0.0.1",
        "Current size",
        "MB",
        brew.filename,
        "with Pale Ale",
        response.context["backup_created"],
        response.context["backup_size"],
        "a backup of the current state is taken",
        f'data-expected="{target["name"]}"',
    ):
        assert fact in page, fact
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]  # looking changes nothing


def test_restore_with_the_typed_name_brings_the_data_back_and_names_the_undo(admin, brew):
    response = restore(admin, brew)
    assert response.status_code == 200
    assert fetch("default", "SELECT name FROM brew") == [("Pale Ale",)]
    result = response.context["result"]
    undo = Backup.objects.get(filename=result.pre_restore_backup.filename)
    assert undo.trigger == "pre-restore" and undo.status == BackupStatus.SUCCEEDED
    page = response.content.decode()
    assert "was restored from" in page and brew.filename in page
    assert f"To undo this restore, restore <strong>{undo.filename}</strong>" in page
    assert url("restore", undo) in page
    record = Operation.objects.get(action="restore")
    assert (record.status, record.origin, record.actor, record.filename) == (
        "succeeded",
        Origin.ADMIN,
        "root",
        brew.filename,
    )


def test_a_restore_that_logs_the_user_out_still_shows_its_outcome(superuser):
    """The backup predates the login: the restore removes the session, and the result page,
    rendered in the same response, is all the user gets to see."""
    backup = services.create_backup(actor=services.Actor.command())
    client = login(superuser)
    response = restore(client, backup)
    assert response.status_code == 200
    assert "was restored from" in response.content.decode()
    assert client.get(CHANGELIST)["Location"].startswith(reverse("admin:login"))
    assert Operation.objects.get(action="restore").status == "succeeded"


def test_restore_refuses_a_wrong_or_missing_database_name(admin, brew):
    for typed in ("", "hoppybrew", database_name().upper(), database_name() + "x"):
        response = restore(admin, brew, typed)
        assert response.status_code == 200
        assert "restore-confirmation" in response.content.decode()
        assert response.context["form"].errors
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]
    assert not Operation.objects.filter(action="restore").exists()
    assert Backup.objects.count() == 1  # no pre-restore backup either


def test_a_failed_restore_says_why_and_that_nothing_changed(admin, brew, backup_dir):
    with open(backup_dir / brew.filename, "ab") as file:
        file.write(b"tampered")
    response = restore(admin, brew)
    assert response.status_code == 422
    page = response.content.decode()
    assert "does not match its manifest" in page
    assert "Nothing was changed" in page
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]
    assert Operation.objects.get(action="restore").status == "failed"


def test_restore_action_opens_the_confirmation_page_for_exactly_one_backup(admin, brew):
    other = create(admin)
    response = admin.post(CHANGELIST, {"action": "restore_selected", "_selected_action": [brew.pk]})
    assert response.status_code == 302 and response["Location"] == url("restore", brew)
    response = admin.post(
        CHANGELIST, {"action": "restore_selected", "_selected_action": [brew.pk, other.pk]}, follow=True
    )
    assert messages_of(response) == [("error", "Select exactly one backup to restore.")]
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]


def test_backups_that_cannot_be_restored_get_no_link_and_no_confirmation(admin, brew):
    Backup.objects.filter(pk=brew.pk).update(status=BackupStatus.MISSING)
    assert url("restore", brew) not in admin.get(CHANGELIST).content.decode()
    response = admin.get(url("restore", brew), follow=True)
    assert messages_of(response) == [("error", f"{brew.filename} cannot be restored: its status is missing.")]
    response = restore(admin, brew)
    assert response.status_code == 302
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]


def test_staff_without_restore_backup_cannot_restore_by_any_route(brew):
    staff = login(make_staff("operator", *EVERYTHING_BUT_RESTORE))
    page = staff.get(CHANGELIST).content.decode()
    assert url("restore", brew) not in page and "restore_selected" not in page
    assert url("restore", brew) not in staff.get(url("change", brew)).content.decode()
    response = staff.post(CHANGELIST, {"action": "restore_selected", "_selected_action": [brew.pk]}, follow=True)
    assert messages_of(response) == [("warning", "No action selected.")]
    assert staff.get(url("restore", brew)).status_code == 403
    assert restore(staff, brew).status_code == 403
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]
    assert not Operation.objects.filter(action="restore").exists()
    assert Backup.objects.count() == 1


def test_anonymous_visitors_are_sent_to_the_login_page(brew):
    anonymous = Client()
    for response in (
        anonymous.get(CHANGELIST),
        anonymous.get(url("restore", brew)),
        restore(anonymous, brew),
        anonymous.get(url("download", brew)),
        anonymous.post(CREATE, {"description": "anonymous"}),
        anonymous.post(SYNC),
    ):
        assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]
    assert Backup.objects.count() == 1


# -- delete -------------------------------------------------------------------------------------


def test_delete_one_removes_file_manifest_and_row(admin, backup_dir):
    backup = create(admin)
    confirmation = admin.get(url("delete", backup)).content.decode()
    assert "deleted from the backup storage too" in confirmation
    response = admin.post(url("delete", backup), {"post": "yes"}, follow=True)
    assert messages_of(response) == [("success", f"The backup “{backup.filename}” was deleted successfully.")]
    assert not (backup_dir / backup.filename).exists()
    assert not (backup_dir / f"{backup.filename}.json").exists()
    assert not Backup.objects.exists()
    assert LogEntry.objects.get(action_flag=DELETION).object_repr == backup.filename
    assert Operation.objects.get(action="delete").origin == Origin.ADMIN


def test_bulk_delete_removes_files_and_reports_each_refusal(admin, backup_dir):
    kept, first, second = create(admin), create(admin), create(admin)
    Backup.objects.filter(pk=kept.pk).update(status=BackupStatus.RUNNING)  # still being written
    confirmation = admin.post(CHANGELIST, {"action": "delete_selected", "_selected_action": [first.pk, second.pk]})
    assert "deleted from the backup storage too" in confirmation.content.decode()
    response = delete_selected(admin, [kept, first, second])
    assert messages_of(response) == [
        (
            "error",
            f"{kept.filename} was not deleted: {kept.filename} is still being written; delete it when it has finished.",
        ),
        ("warning", f"Deleted 2 of the 3 selected backups: {second.filename}, {first.filename}"),
    ]
    assert sorted(path.name for path in backup_dir.iterdir()) == [kept.filename, f"{kept.filename}.json"]
    assert [backup.filename for backup in Backup.objects.all()] == [kept.filename]
    assert sorted(entry.object_repr for entry in LogEntry.objects.all()) == sorted([first.filename, second.filename])


def test_bulk_delete_of_everything_says_how_many(admin, backup_dir):
    backups = [create(admin), create(admin)]
    response = delete_selected(admin, backups)
    assert messages_of(response) == [("success", "Successfully deleted 2 backups.")]
    assert not any(backup_dir.iterdir()) and not Backup.objects.exists()


def test_delete_is_hidden_and_refused_without_delete_backup(admin, backup_dir):
    backup = create(admin)
    viewer = login(make_staff("viewer", "view_backup", "add_backup", "restore_backup"))
    assert 'value="delete_selected"' not in viewer.get(CHANGELIST).content.decode()
    assert viewer.get(url("delete", backup)).status_code == 403
    assert viewer.post(url("delete", backup), {"post": "yes"}).status_code == 403
    response = delete_selected(viewer, [backup])
    assert messages_of(response) == [("warning", "No action selected.")]
    assert (backup_dir / backup.filename).exists() and Backup.objects.exists()


# -- download -----------------------------------------------------------------------------------


def test_download_streams_the_file_as_an_attachment(admin, backup_dir):
    backup = create(admin)
    response = admin.get(url("download", backup))
    assert response.status_code == 200
    assert response.streaming
    content = b"".join(response.streaming_content)
    assert content == (backup_dir / backup.filename).read_bytes()
    assert response["Content-Length"] == str(len(content))
    assert response["Content-Disposition"] == f'attachment; filename="{backup.filename}"'
    assert response["Content-Type"] == "application/octet-stream"
    assert response["X-Backup-SHA256"] == backup.sha256  # the same download as the API's


def test_download_link_and_view_need_download_backup(admin):
    backup = create(admin)
    viewer = login(make_staff("viewer", "view_backup", "restore_backup"))
    page = viewer.get(CHANGELIST).content.decode()
    assert url("restore", backup) in page and url("download", backup) not in page
    assert url("download", backup) not in viewer.get(url("change", backup)).content.decode()
    assert viewer.get(url("download", backup)).status_code == 403
    downloader = login(make_staff("downloader", "view_backup", "download_backup"))
    assert url("download", backup) in downloader.get(url("change", backup)).content.decode()
    assert downloader.get(url("download", backup)).status_code == 200


def test_download_of_a_vanished_file_is_an_error_message(admin, backup_dir):
    backup = create(admin)
    (backup_dir / backup.filename).unlink()
    response = admin.get(url("download", backup), follow=True)
    assert messages_of(response) == [
        (
            "error",
            f"{backup.filename} cannot be downloaded: The file {backup.filename} is missing from the backup storage.",
        )
    ]


# -- history and audit log ----------------------------------------------------------------------


def test_restore_history_shows_who_what_when_and_the_undo_backup(admin, brew):
    undo = restore(admin, brew).context["result"].pre_restore_backup
    response = admin.get(HISTORY)
    assert response.status_code == 200
    [record] = response.context["cl"].result_list
    page = response.content.decode()
    for column, fact in (
        ("actor", "root"),
        ("filename", brew.filename),
        ("origin", "admin"),
        ("client_address", "127.0.0.1"),
        ("status", "succeeded"),
        ("pre_restore_backup", undo.filename),
    ):
        assert f'class="field-{column}">{fact}</td>' in page, column
    assert f"Restored {database_name()}" in page
    assert record.action == "restore"  # creates and deletes are in the audit log only


def test_history_and_audit_log_are_read_only(admin, brew):
    restore(admin, brew)
    record = Operation.objects.get(action="restore")
    for changelist, model in ((HISTORY, "restorehistory"), (AUDIT_LOG, "operation")):
        page = admin.get(changelist).content.decode()
        assert reverse(f"admin:backups_{model}_add") not in page
        assert 'value="delete_selected"' not in page
        change = reverse(f"admin:backups_{model}_change", args=[quote(record.pk)])
        assert admin.get(change).status_code == 200
        assert admin.post(change, {"message": "rewritten"}).status_code == 403
        assert admin.post(reverse(f"admin:backups_{model}_delete", args=[quote(record.pk)])).status_code == 403
        assert admin.get(reverse(f"admin:backups_{model}_add")).status_code == 403
    assert Operation.objects.get(pk=record.pk).message.startswith("Restored")
    assert {operation.action for operation in admin.get(AUDIT_LOG).context["cl"].result_list} == {"create", "restore"}
    assert "Audit log" in admin.get(reverse("admin:index")).content.decode()


def test_the_history_is_for_those_who_see_backups(brew):
    assert login(make_staff("viewer", "view_backup")).get(HISTORY).status_code == 200
    assert login(make_staff("stranger")).get(HISTORY).status_code == 403


# -- escaping -----------------------------------------------------------------------------------


def test_descriptions_never_inject_markup(admin):
    backup = create(admin, MARKUP)
    for page_url in (CHANGELIST, url("change", backup), url("restore", backup)):  # where descriptions show
        page = admin.get(page_url).content.decode()
        assert MARKUP not in page and "<b>bold</b>" not in page and '<script>alert("owned")' not in page
        assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in page
