"""The admin, through Django's test client, against the real PostgreSQL server (and SQLite) and
real files: every button, link and action, each permission allowed and refused, errors as admin
messages, backups and restores of every kind (whole, as a copy, chosen models) run by real worker
processes, undeletes by the service in the request as the API and the command run them."""

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.utils import quote
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils.html import strip_tags

from backups import services
from backups.engines import get_engine
from backups.formatting import human_size
from backups.models import Backup, BackupStatus, DatabaseCopy, Operation, Origin, Trigger
from backups.services.jobs import RestoreProgressFile, progress_path
from backups.services.journal import this_worker
from tests.recoveryapp.models import Brewery, Recipe, Tasting

from .conftest import (
    brew_recipes,
    database_exists,
    execute,
    fetch,
    job_worker_pids,
    make_staff,
    names,
    pending_restore,
    read_copy,
    read_manifest,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:backups_backup_changelist")
CREATE = reverse("admin:backups_backup_create")
SYNC = reverse("admin:backups_backup_sync")
OVERVIEW = reverse("admin:backups_backup_overview")
HISTORY = reverse("admin:backups_restorehistory_changelist")
AUDIT_LOG = reverse("admin:backups_operation_changelist")
RESTORE_JOBS = f"{CHANGELIST}restores/"
EVERYTHING_BUT_RESTORE = ("view_backup", "add_backup", "change_backup", "delete_backup", "download_backup")
MARKUP = '<script>alert("owned")</script><b>bold</b>'
# A bound on waiting for a worker process, not a measurement.
PATIENCE = 120


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


def create(description="", database="default"):
    """A backup made by the service directly, as the setup of a test; returns its catalog row."""
    return services.create_backup(actor=services.Actor.command(), description=description, database=database)


def wait_for(find):
    """``find()``'s first truthy answer; the workers write the rows."""
    deadline = time.monotonic() + PATIENCE
    while not (found := find()):
        assert time.monotonic() < deadline, "the worker did not get there"
        time.sleep(0.2)
    return found


def database_name():
    return connection.settings_dict["NAME"]


def restore(client, backup, typed=None):
    """Confirm the restore; returns the response (a redirect to the job's page when accepted)."""
    return client.post(url("restore", backup), {"confirm_database": database_name() if typed is None else typed})


def finished_restore(client, backup, typed=None):
    """Confirm the restore, wait for its worker, and return the job's page: the result."""
    return finished_job(client, restore(client, backup, typed))


def finished_job(client, response):
    """The page of the restore job that ``response`` (a form's answer) redirects to, once its
    worker has ended: the result."""
    assert response.status_code == 302, response.content.decode()[:500]
    job_url = response["Location"]
    assert job_url.startswith(RESTORE_JOBS), job_url
    job_id = job_url.rstrip("/").rsplit("/", 1)[-1]
    wait_for(lambda: Operation.objects.filter(pk=job_id, status__in=("succeeded", "failed")).exists())
    return client.get(job_url)


def text_of(html):
    """What a person reads of ``html``: its text, each run of white space one space."""
    return " ".join(strip_tags(html).split())


def outcome(response):
    """The result page's outcome line: (its level, what it says)."""
    level, html = re.search(
        r'<li class="(\w+)" id="restore-outcome">(.*?)</li>', response.content.decode(), re.S
    ).groups()
    return level, text_of(html)


def delete_selected(client, backups):
    return client.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [backup.pk for backup in backups], "post": "yes"},
        follow=True,
    )


# -- the list -----------------------------------------------------------------------------------


def test_list_shows_each_backup_newest_first_with_badges_ages_and_a_restore_button(admin, settings):
    settings.TIME_ZONE = "Asia/Tokyo"
    older, newer = create("older"), create("newer")
    older.created_at = datetime(2020, 1, 2, 12, 30, 5, tzinfo=UTC)
    older.save()
    response = admin.get(CHANGELIST)
    assert response.status_code == 200
    assert [backup.filename for backup in response.context["cl"].result_list] == [newer.filename, older.filename]
    page = response.content.decode()
    for cell in (
        "<title>Backups | ",
        '<span class="backup-filename">' + older.filename.replace("_", "_<wbr>") + "</span>",
        '<span class="backup-description">older</span>',
        '<time datetime="2020-01-02T12:30:05+00:00" title="2020-01-02 21:30:05 JST">',
        f'<td class="field-size">{human_size(older.size_bytes)}</td>',
        '<span class="backup-badge backup-badge-good" title="">succeeded</span>',
        '<span class="backup-badge backup-badge-quiet" title="">not verified</span>',
        '<td class="field-trigger">manual</td>',
        '<td class="field-database">default</td>',
        f'<a class="button backup-restore-button" href="{url("restore", older)}"',
        f'aria-label="Restore {older.filename}">Restore…</a>',
    ):
        assert cell in page, cell
    assert re.search(r"<time [^>]*>\d+ d ago</time>", page)
    assert "Select backup to change" not in page
    assert "<textarea" not in page and "form-TOTAL_FORMS" not in page  # descriptions change on the detail page


def test_failed_and_missing_attempts_are_behind_a_filter_with_their_reason(admin):
    good, failed, missing = create("good"), create("failed"), create("missing")
    Backup.objects.filter(pk=failed.pk).update(status=BackupStatus.FAILED, error="pg_dump: connection refused")
    Backup.objects.filter(pk=missing.pk).update(status=BackupStatus.MISSING)

    def listed(query):
        response = admin.get(CHANGELIST, query)
        assert response.status_code == 200
        return response, {backup.filename for backup in response.context["cl"].result_list}

    response, shown = listed({})
    assert shown == {good.filename}
    assert "Failed and missing (2)" in response.content.decode()
    response, shown = listed({"outcome": "failed"})
    assert shown == {failed.filename, missing.filename}
    page = response.content.decode()
    assert '<span class="backup-reason">pg_dump: connection refused</span>' in page
    assert '<span class="backup-reason">The file is missing from the backup storage.</span>' in page
    assert "backup-restore-button" not in page
    assert listed({"outcome": "all"})[1] == {good.filename, failed.filename, missing.filename}


def test_filters_search_and_date_hierarchy(admin):
    first, second = create("Before the v2.0 upgrade"), create("nightly")
    Backup.objects.filter(pk=first.pk).update(created_at=first.created_at.replace(year=2020))
    Backup.objects.filter(pk=second.pk).update(status=BackupStatus.MISSING)

    def listed(query):
        response = admin.get(CHANGELIST, query)
        assert response.status_code == 200
        return {backup.filename for backup in response.context["cl"].result_list}

    assert listed({"q": "upgrade"}) == {first.filename}
    assert listed({"q": second.filename, "outcome": "all"}) == {second.filename}
    assert listed({"trigger": "manual", "database": "default", "outcome": "all"}) == {first.filename, second.filename}
    assert listed({"created_at__year": "2020"}) == {first.filename}


def test_the_standard_add_form_does_not_exist(admin):
    response = admin.get(CHANGELIST)
    assert reverse("admin:backups_backup_add") not in response.content.decode()
    assert admin.get(reverse("admin:backups_backup_add")).status_code == 403


# -- create and sync ----------------------------------------------------------------------------


def test_create_button_starts_a_worker_shows_its_progress_then_the_backup(admin, backup_dir):
    response = admin.post(CREATE, {"description": "Before the v2.0 upgrade"})
    backup = Backup.objects.get()
    assert response.status_code == 302 and response["Location"] == url("job", backup)
    assert backup.description == "Before the v2.0 upgrade"
    wait_for(lambda: Backup.objects.filter(status=BackupStatus.SUCCEEDED).exists())
    response = admin.get(url("job", backup), follow=True)
    backup = Backup.objects.get()
    assert messages_of(response) == [
        ("success", f"Backup {backup.filename} created ({human_size(backup.size_bytes)}).")
    ]
    assert response.redirect_chain == [(CHANGELIST, 302)]
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


def test_a_backup_that_failed_in_its_worker_says_why(admin):
    backup = create()
    Backup.objects.filter(pk=backup.pk).update(status=BackupStatus.FAILED, error="The disk is full.")
    response = admin.get(url("job", backup), follow=True)
    assert messages_of(response) == [("error", "The backup was not created: The disk is full.")]


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
    backup = create()
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


# -- the detail page ----------------------------------------------------------------------------


def test_detail_page_shows_duration_copies_verification_history_and_manifest(admin, backup_dir):
    backup = create("detailed")
    services.verify_backup(backup.filename, actor=services.Actor.command(), level="checksum")
    backup = Backup.objects.get()
    response = admin.get(url("change", backup))
    assert response.status_code == 200
    page = response.content.decode()
    for fact in (
        f"<title>{backup.filename} | Backup | ",
        f"<h2>{backup.filename}</h2>",
        "Duration:",
        f"primary copy in {backup_dir}",
        "SHA-256:",
        f'<code class="backup-checksum">{backup.sha256}</code>',
        f"<td>succeeded</td><td>{services.Actor.command().name}</td><td>checksum verification passed</td>",
        "&quot;sha256&quot;: &quot;" + backup.sha256,
        url("restore", backup),
    ):
        assert fact in page, fact
    assert "Change backup" not in page and "Sha256" not in page


def test_description_is_the_only_field_the_change_form_saves(admin, backup_dir):
    backup = create("first words")
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
    backup = create("first words")
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


def test_viewers_see_the_description_but_cannot_change_it(admin):
    backup = create("read me")
    viewer = login(make_staff("viewer", "view_backup"))
    response = viewer.get(url("change", backup))
    assert response.status_code == 200
    assert "read me" in response.content.decode() and "<textarea" not in response.content.decode()
    assert viewer.post(url("change", backup), {"description": "changed"}).status_code == 403
    assert Backup.objects.get().description == "read me"


# -- verification -------------------------------------------------------------------------------


def test_verify_actions_name_what_ran_and_how_it_went(admin):
    backup = create()
    for action, text in (
        ("verify_checksums", f"Checksum verification of {backup.filename} passed."),
        ("drill_restores", f"Restore drill of {backup.filename} passed."),
    ):
        response = admin.post(CHANGELIST, {"action": action, "_selected_action": [backup.pk]}, follow=True)
        assert messages_of(response) == [("success", text)]
    assert Backup.objects.get().verification["level"] == "restore"


# -- the overview -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])
def test_overview_gives_each_database_its_status_light_and_reason(admin, settings):
    settings.BACKUP_DATABASES = ["default", "sqlite"]
    settings.BACKUP_MAX_AGE_HOURS = 24
    settings.BACKUP_ENABLED = True
    settings.BACKUP_SCHEDULE = "0 2 * * *"
    old = create("old", database="sqlite")
    Backup.objects.filter(pk=old.pk).update(created_at=old.created_at - timedelta(hours=30))
    create("fresh")
    create("fresh again")
    response = admin.get(OVERVIEW)
    assert response.status_code == 200
    states = {database.alias: database.state for database in response.context["overview"].databases}
    assert states == {"default": "healthy", "sqlite": "stale"}
    page = response.content.decode()
    assert "The newest backup of database &#x27;sqlite&#x27; is 30 hours old (limit 24 hours)." in page
    assert page.count('<circle class="point"') == 2 * 3  # size and duration of each good backup
    assert "Next scheduled run</th><td>" in page and "not scheduled" not in page
    primary = response.context["overview"].storages[0]
    assert (primary.location, primary.count) == ("primary", 3)
    assert primary.size_bytes == sum(Backup.objects.values_list("size_bytes", flat=True))

    failed = create("doomed")
    Backup.objects.filter(pk=failed.pk).update(
        status=BackupStatus.FAILED, error="pg_dump: server closed the connection"
    )
    response = admin.get(OVERVIEW)
    default = response.context["overview"].databases[0]
    assert default.state == "failing"
    assert default.reasons == ["The latest backup attempt failed: pg_dump: server closed the connection"]
    [failure] = response.context["overview"].failures
    assert (failure.action, failure.filename, failure.reason) == (
        "backup",
        failed.filename,
        "pg_dump: server closed the connection",
    )


def test_overview_shows_failing_drills(admin, settings):
    settings.BACKUP_DATABASES = ["default"]
    backup = create()
    Backup.objects.filter(pk=backup.pk).update(
        verified_at=backup.created_at,
        verification={"level": "restore", "passed": False, "message": "the table brew is empty"},
    )
    response = admin.get(OVERVIEW)
    [database] = response.context["overview"].databases
    assert database.state == "drills failing" and database.last_drill.filename == backup.filename
    assert "not scheduled (<code>BACKUP_ENABLED</code> is off)" in response.content.decode()
    assert OVERVIEW in admin.get(reverse("admin:app_list", args=["backups"])).content.decode()
    assert login(make_staff("stranger")).get(OVERVIEW).status_code == 403


# -- restore ------------------------------------------------------------------------------------


@pytest.fixture
def brew(admin):
    """A table with a row, a backup of it, and then a change the restore should undo."""
    execute("default", "CREATE TABLE brew (id int PRIMARY KEY, name text)", "INSERT INTO brew VALUES (1, 'Pale Ale')")
    backup = create("with Pale Ale")
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
        "runs in a process of its own",
        f'data-expected="{target["name"]}"',
        # Never verified: the drill is a button here, not a command to type elsewhere.
        '<input type="hidden" name="action" value="drill_restores">',
    ):
        assert fact in page, fact
    assert "manage.py" not in page and "cut the request short" not in page
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]  # looking changes nothing


def test_restore_runs_as_a_job_brings_the_data_back_and_names_the_undo(admin, brew):
    response = finished_restore(admin, brew)
    assert response.status_code == 200
    assert fetch("default", "SELECT name FROM brew") == [("Pale Ale",)]
    record = Operation.objects.get(action="restore")
    undo = Backup.objects.get(filename=record.details["pre_restore_backup"])
    assert undo.trigger == "pre-restore" and undo.status == BackupStatus.SUCCEEDED
    page = response.content.decode()
    assert "was restored from" in page and brew.filename in page
    assert f"To undo this restore, restore <strong>{undo.filename}</strong>" in page
    assert url("restore", undo) in page
    assert (record.status, record.origin, record.actor, record.filename) == (
        "succeeded",
        Origin.ADMIN,
        "root",
        brew.filename,
    )
    assert not progress_path(record.pk).exists()  # the journal holds the outcome now


def test_the_progress_page_and_its_poller_follow_the_phases(admin, brew):
    job = pending_restore(brew)
    page = admin.get(reverse("admin:backups_backup_restore_job", args=[job.pk])).content.decode()
    assert '<h2 id="job-phase">Waiting for the worker to start</h2>' in page
    assert "job_progress.js" in page and '<progress id="job-bar"' in page
    poll_url = re.search(r'data-poll-url="([^"]+)"', page).group(1)

    # The phases as the worker records them, read back without a session: the ticket says who.
    progress = RestoreProgressFile(job.pk)
    progress.stage("checking")
    assert Client().get(poll_url).json()["phase_label"] == "Checking the backup file against its checksum"
    progress.replayed(read=512, total=2048, elapsed=2.0, final=False)
    state = Client().get(poll_url).json()
    assert (state["phase"], state["percent"], state["done"], state["total"], state["rate"], state["left"]) == (
        "loading",
        25,
        "512 bytes",
        "2.0 KB",
        "256 bytes/s",
        "0:06",
    )
    page = admin.get(reverse("admin:backups_backup_restore_job", args=[job.pk])).content.decode()
    assert '<progress id="job-bar" aria-labelledby="job-phase" max="100" value="25">' in page  # a reload
    progress.replayed(read=2048, total=2048, elapsed=4.0, final=True)
    assert Client().get(poll_url).json()["phase_label"] == "Rebuilding the backup catalog"
    progress.finish()
    assert Client().get(poll_url).json()["finished"] is True
    assert Client().get(poll_url[:-4] + "xyz/").status_code == 404  # a forged ticket


def test_the_progress_of_a_backup_is_estimated_from_the_previous_one(admin):
    previous = create()
    running = create()
    Backup.objects.filter(pk=running.pk).update(
        status=BackupStatus.RUNNING, worker=this_worker(), bytes_written=previous.size_bytes // 2, finished_at=None
    )
    page = admin.get(url("job", running)).content.decode()
    assert '<h2 id="job-phase">Writing the backup</h2>' in page
    poll_url = re.search(r'data-poll-url="([^"]+)"', page).group(1)
    state = Client().get(poll_url).json()
    assert (state["percent"], state["total"]) == (50, f"about {human_size(previous.size_bytes)}")


def test_a_restore_announces_the_phases_the_progress_page_shows(brew):
    phases = []
    services.restore_backup(
        brew.filename,
        actor=services.Actor.command(),
        stage=lambda phase, backup=None: phases.append((phase, backup.trigger if backup else None)),
    )
    assert phases == [("checking", None), ("pre-restore backup", "pre-restore"), ("loading", None)]
    assert fetch("default", "SELECT name FROM brew") == [("Pale Ale",)]


def test_a_restore_that_logs_the_user_out_shows_its_outcome_after_logging_in(superuser):
    """The backup predates the login: the restore removes the session, and the result waits
    for the user behind the login page."""
    backup = create()
    client = login(superuser)
    job_url = restore(client, backup)["Location"]
    job_id = job_url.rstrip("/").rsplit("/", 1)[-1]
    wait_for(lambda: Operation.objects.filter(pk=job_id, status="succeeded").exists())
    response = client.get(job_url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    client.force_login(superuser)
    assert "was restored from" in client.get(job_url).content.decode()


def test_restore_refuses_a_wrong_or_missing_database_name(admin, brew):
    for typed in ("", "hoppybrew", database_name().upper(), database_name() + "x"):
        response = restore(admin, brew, typed)
        assert response.status_code == 200
        assert "restore-confirmation" in response.content.decode()
        assert response.context["form"].errors
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]
    assert not Operation.objects.filter(action="restore").exists()
    assert Backup.objects.count() == 1  # no pre-restore backup either


@pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])
def test_a_sqlite_restore_is_confirmed_by_the_file_name(admin, settings):
    backup = create(database="sqlite")
    path = settings.DATABASES["sqlite"]["NAME"]
    page = admin.get(url("restore", backup)).content.decode()
    assert f"type the name of the database file, <strong>{Path(path).name}</strong>" in page
    assert not restore(admin, backup, typed=str(path)).context["form"].is_valid()
    response = finished_restore(admin, backup, typed=Path(path).name)
    assert "was restored from" in response.content.decode()


def test_a_failed_restore_says_why_and_that_nothing_changed(admin, brew, backup_dir):
    with open(backup_dir / brew.filename, "ab") as file:
        file.write(b"tampered")
    response = finished_restore(admin, brew)
    page = response.content.decode()
    assert "does not match its manifest" in page
    assert "Nothing was changed" in page
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]
    assert Operation.objects.get(action="restore").status == "failed"


def test_restore_action_opens_the_confirmation_page_for_exactly_one_backup(admin, brew):
    other = create()
    response = admin.post(CHANGELIST, {"action": "restore_selected", "_selected_action": [brew.pk]})
    assert response.status_code == 302 and response["Location"] == url("restore", brew)
    response = admin.post(
        CHANGELIST, {"action": "restore_selected", "_selected_action": [brew.pk, other.pk]}, follow=True
    )
    assert messages_of(response) == [("error", "Select exactly one backup to restore.")]
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]


def test_backups_that_cannot_be_restored_get_no_button_and_no_confirmation(admin, brew):
    Backup.objects.filter(pk=brew.pk).update(status=BackupStatus.MISSING)
    assert url("restore", brew) not in admin.get(CHANGELIST, {"outcome": "all"}).content.decode()
    response = admin.get(url("restore", brew), follow=True)
    assert messages_of(response) == [("error", f"{brew.filename} cannot be restored: its status is missing.")]
    response = restore(admin, brew)
    assert response.status_code == 302 and response["Location"] == CHANGELIST
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
        anonymous.get(OVERVIEW),
        anonymous.get(url("restore", brew)),
        restore(anonymous, brew),
        anonymous.get(url("download", brew)),
        anonymous.get(url("job", brew)),
        anonymous.get(reverse("admin:backups_backup_restore_job", args=["00000000-0000-0000-0000-000000000000"])),
        anonymous.post(CREATE, {"description": "anonymous"}),
        anonymous.post(SYNC),
    ):
        assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert anonymous.get(reverse("admin:backups_backup_progress", args=["forged"])).status_code == 404
    assert fetch("default", "SELECT name FROM brew") == [("Stout",)]
    assert Backup.objects.count() == 1


# -- restore as a copy, restore chosen models ---------------------------------------------------

COPIES = reverse("admin:backups_databasecopy_changelist")
ENGINES = [
    pytest.param("default", marks=pytest.mark.django_db(transaction=True, databases=["default"]), id="postgresql"),
    pytest.param("sqlite", marks=pytest.mark.django_db(transaction=True, databases=["default", "sqlite"]), id="sqlite"),
]


@pytest.fixture
def alias(request):
    return request.param


def restore_models(client, backup, *labels, include_related=False, confirmed=True):
    """Post the model restore page: the choice, and with ``confirmed`` its confirmation."""
    data = {"models": list(labels), **({"include_related": "on"} if include_related else {})}
    return client.post(url("restore_models", backup), {**data, "post": "yes"} if confirmed else data)


def hidden_fields(page, form_id):
    """The hidden inputs of the form ``form_id`` on ``page`` but its CSRF token, as a browser
    would post them."""
    form = re.search(rf'<form [^>]*id="{form_id}".*?</form>', page, re.S).group(0)
    fields = {}
    for name, value in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form):
        if name != "csrfmiddlewaretoken":
            fields.setdefault(name, []).append(value)
    return fields


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_a_copy_started_from_a_backups_page_runs_as_a_job_and_leaves_the_live_database_alone(admin, alias, settings):
    backup = brew_recipes(alias)
    Brewery.objects.using(alias).filter(pk=1).update(name="Renamed since")
    detail = admin.get(url("change", backup)).content.decode()
    assert f'href="{url("restore_copy", backup)}">Restore as a copy…</a>' in detail
    page = admin.get(url("restore_copy", backup)).content.decode()
    assert backup.filename in page and "The live database is not touched" in page
    assert "restored in a process of its own" in page and 'aria-describedby="copy-name-help"' in page

    # A name the service refuses at once is said on the form, and no job starts.
    response = admin.post(url("restore_copy", backup), {"into": "1 bad name"})
    assert response.status_code == 200 and 'id="copy-form"' in response.content.decode()
    assert messages_of(response) == [
        (
            "error",
            f"{backup.filename} was not restored as a copy: A copy's name is a letter or '_' followed by letters, "
            "digits and '_' (at most 63). Nothing was changed.",
        )
    ]
    assert not DatabaseCopy.objects.exists() and job_worker_pids() == []

    response = finished_job(admin, admin.post(url("restore_copy", backup), {"into": f"hb_admin_copy{settings.SUFFIX}"}))
    copy = DatabaseCopy.objects.get()
    try:
        assert response.context["title"] == "Backup restored as a copy"
        level, text = outcome(response)
        assert level == "success" and text.startswith(f"{backup.filename} (taken ")
        assert f"was restored into the new database {copy.name}, finished " in text
        assert text.endswith(f"The live database {alias} was not touched.")
        page = response.content.decode()
        assert f'The copy is listed under <a href="{COPIES}">Database copies</a>' in page
        assert "restore it…" not in page and "Users and sessions" not in page  # a whole restore's lines
        assert f'<td class="field-filename">{backup.filename}</td>' in admin.get(COPIES).content.decode()
        assert read_copy(alias, copy.name, "SELECT name FROM recoveryapp_brewery ORDER BY id") == [
            ("Hoppy",),
            ("Malty",),
        ]
        assert names(alias, Brewery) == ["Renamed since", "Malty"]
        assert not Backup.objects.filter(trigger=Trigger.PRE_RESTORE).exists()  # nothing live was replaced
        record = Operation.objects.get(action="restore-copy", status="succeeded")
        assert (record.origin, record.actor, record.details["into"]) == (Origin.ADMIN, "root", copy.name)
        assert not progress_path(record.pk).exists()  # the journal holds the outcome now
    finally:
        response = admin.post(COPIES, {"action": "drop_copies", "_selected_action": [copy.pk]}, follow=True)
    assert messages_of(response) == [("success", f"Dropped the copy {copy.name}.")]
    assert not database_exists(alias, copy.name)


def test_a_copy_that_fails_in_its_worker_says_why_and_leaves_no_database(admin, backup_dir, settings):
    backup = create()
    with open(backup_dir / backup.filename, "ab") as file:
        file.write(b"tampered")  # found out by the worker's checksum, not by the request
    into = f"hb_admin_failed_copy{settings.SUFFIX}"
    response = finished_job(admin, admin.post(url("restore_copy", backup), {"into": into}))
    assert response.context["title"] == "The copy failed"
    level, text = outcome(response)
    assert level == "error" and "does not match its manifest" in text
    assert "The live database default was not touched." in text_of(response.content.decode())
    assert not DatabaseCopy.objects.exists() and not database_exists("default", into)
    assert Operation.objects.get(action="restore-copy").status == "failed"


def test_copy_and_model_restore_jobs_say_what_they_restore_and_follow_their_phases(admin):
    backup = create()
    copy = pending_restore(backup, "restore-copy", into="hb_lastweek")
    page = admin.get(reverse("admin:backups_backup_restore_job", args=[copy.pk])).content.decode()
    assert "<title>Restoring a backup as a copy |" in page and "&rsaquo; Restore as a copy\n" in page
    assert '<h2 id="job-phase">Waiting for the worker to start</h2>' in page
    text = text_of(page)
    assert f"Restoring {backup.filename} into the new database hb_lastweek, beside the database default" in text
    assert "loading the backup into the new database." in text

    models = pending_restore(backup, "restore-models", models=["recoveryapp.Recipe", "auth"], include_related=False)
    page = admin.get(reverse("admin:backups_backup_restore_job", args=[models.pk])).content.decode()
    assert "<title>Restoring chosen models |" in page and "&rsaquo; Restore chosen models\n" in page
    text = text_of(page)
    assert f"Restoring the rows of recoveryapp.Recipe, auth in the database default from {backup.filename}" in text
    assert "copying the chosen tables' rows in one transaction." in text
    poll_url = re.search(r'data-poll-url="([^"]+)"', page).group(1)
    # As run_job records it for a model restore: the load's last byte is followed by its own phases.
    progress = RestoreProgressFile(models.pk, rebuilds_catalog=False)
    progress.replayed(read=2048, total=2048, elapsed=4.0, final=True)
    assert Client().get(poll_url).json()["phase_label"] == "Loading the backup into the database"
    progress.stage("copying rows")
    assert Client().get(poll_url).json()["phase_label"] == "Copying the chosen tables' rows from the backup"


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_a_model_restore_from_the_admin_runs_as_a_job_and_replaces_only_the_chosen_tables_rows(
    admin, alias, model_workers
):
    backup = brew_recipes(alias)
    # The morning's mistake, and the day's work in other tables that must survive it.
    Recipe.objects.using(alias).filter(pk=2).delete()
    Recipe.objects.using(alias).get(pk=1).ingredients.clear()
    Brewery.objects.using(alias).create(id=3, name="Opened today")
    Tasting.objects.using(alias).filter(pk=1).update(note="tasted again today")

    detail = admin.get(url("change", backup)).content.decode()
    assert f'href="{url("restore_models", backup)}">Restore chosen models…</a>' in detail
    page = admin.get(url("restore_models", backup)).content.decode()
    for fact in (
        "<legend>Recoveryapp</legend>",
        'value="recoveryapp" id="choose-recoveryapp"',
        'value="recoveryapp.Recipe" id="choose-recoveryapp.Recipe"',
        '<label for="choose-recoveryapp.Recipe">Recipes <span class="restore-models-tables">(<code>recoveryapp_recipe'
        "</code>, <code>recoveryapp_recipe_ingredients</code>)</span></label>",
        'value="auth.User"',
    ):
        assert fact in page, fact
    assert 'value="backups' not in page  # the service refuses the catalog's own tables

    assert "Choose at least one model." in restore_models(admin, backup).content.decode()
    response = restore_models(admin, backup, "recoveryapp.Recipe", confirmed=False)
    assert response.context["step"] == "confirm"
    assert response.context["chosen"].tables == ["recoveryapp_recipe", "recoveryapp_recipe_ingredients"]
    page = response.content.decode()
    assert "a backup of the current state is taken" in page and "runs in a process of its own" in page
    assert hidden_fields(page, "models-confirm-form") == {"models": ["recoveryapp.Recipe"], "post": ["yes"]}
    assert names(alias, Recipe) == ["Pale Ale"]  # looking changes nothing

    # What the service refuses at once (a backup holds the database) is said on the form.
    with get_engine(alias).lock(exclusive=False):
        response = restore_models(admin, backup, "recoveryapp.Recipe")
    assert response.status_code == 200 and response.context["step"] == "choose"
    [(level, text)] = messages_of(response)
    assert level == "error" and text.startswith(f"The models were not restored from {backup.filename}: ")
    assert "running" in text and job_worker_pids() == []

    response = finished_job(admin, restore_models(admin, backup, "recoveryapp.Recipe"))
    undo = Backup.objects.get(trigger=Trigger.PRE_RESTORE)
    assert response.context["title"] == "Models restored"
    level, text = outcome(response)
    assert level == "success"
    assert text.startswith(
        f"The rows of recoveryapp.Recipe in the database {alias} were restored from {backup.filename}"
    )
    page = response.content.decode()
    assert (
        "<tr><td><code>recoveryapp_recipe</code></td><td>2</td></tr>"
        "<tr><td><code>recoveryapp_recipe_ingredients</code></td><td>1</td></tr>"
    ) in page
    assert f"To undo this restore, restore <strong>{undo.filename}</strong>" in page and url("restore", undo) in page
    assert names(alias, Recipe) == ["Pale Ale", "Stout"]
    assert list(Recipe.objects.using(alias).get(pk=1).ingredients.values_list("name", flat=True)) == ["Citra"]
    assert names(alias, Brewery) == ["Hoppy", "Malty", "Opened today"]
    assert Tasting.objects.using(alias).get().note == "tasted again today"
    record = Operation.objects.get(action="restore-models", status="succeeded")
    assert (record.origin, record.actor) == (Origin.ADMIN, "root")


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_a_foreign_key_refusal_lists_what_would_dangle_and_offers_the_related_models(admin, alias, model_workers):
    backup = brew_recipes(alias)
    # Since the backup: a recipe with a tasting (which a restore of recipes would orphan), and
    # the Malty brewery gone with its stout (which a restore of recipes would point at).
    newer = Recipe.objects.using(alias).create(id=3, name="Session IPA", brewery_id=1)
    Tasting.objects.using(alias).create(id=2, recipe=newer, note="new")
    Recipe.objects.using(alias).filter(pk=2).delete()
    Brewery.objects.using(alias).filter(pk=2).delete()

    response = finished_job(admin, restore_models(admin, backup, "recoveryapp.Recipe"))
    assert response.context["title"] == "The model restore failed"
    level, text = outcome(response)
    assert level == "error" and text.startswith("Restoring only these models would break foreign keys")
    page = response.content.decode()
    for row in (
        "<tr><td>recoveryapp.Recipe (<code>recoveryapp_recipe</code>)</td><td><code>brewery_id</code></td>"
        "<td>recoveryapp.Brewery</td><td>2</td></tr>",
        "<tr><td>recoveryapp.Tasting (<code>recoveryapp_tasting</code>)</td><td><code>recipe_id</code></td>"
        "<td>recoveryapp.Recipe</td><td>3</td></tr>",
    ):
        assert row in page, row
    assert "the rows of recoveryapp.Brewery, recoveryapp.Tasting (and of any models" in page
    assert "Nothing was changed: the rows are replaced in one transaction" in page
    assert names(alias, Recipe) == ["Pale Ale", "Session IPA"]  # nothing changed
    assert Tasting.objects.using(alias).count() == 2
    assert Operation.objects.get(action="restore-models").status == "failed"

    retry = hidden_fields(page, "retry-form")
    assert retry == {"models": ["recoveryapp.Recipe"], "include_related": ["on"], "post": ["yes"]}
    assert f'action="{url("restore_models", backup)}" id="retry-form"' in page
    response = finished_job(admin, admin.post(url("restore_models", backup), retry))
    level, text = outcome(response)
    assert level == "success"
    assert text.startswith(
        f"The rows of recoveryapp.Brewery, recoveryapp.Recipe, recoveryapp.Tasting in the database {alias} were "
        "restored from"
    )
    assert names(alias, Recipe) == ["Pale Ale", "Stout"]
    assert names(alias, Brewery) == ["Hoppy", "Malty"]
    assert list(Tasting.objects.using(alias).values_list("note", flat=True)) == ["bright"]


# -- undelete -----------------------------------------------------------------------------------


def undelete(client, backup, model, pks, confirmed=False):
    data = {"model": model, "pks": pks, **({"post": "yes"} if confirmed else {})}
    return client.post(url("undelete", backup), data)


@pytest.mark.parametrize("alias", ENGINES, indirect=True)
def test_undelete_from_a_backups_page_shows_what_would_come_back_then_brings_it_back(admin, alias):
    backup = brew_recipes(alias)
    # The mistake: the Hoppy brewery deleted, with its recipe, the recipe's tasting and hop.
    Brewery.objects.using(alias).filter(pk=1).delete()
    Recipe.objects.using(alias).filter(pk=2).update(style="porter")  # changed since: a conflict
    Brewery.objects.using(alias).create(id=3, name="Opened today")

    detail = admin.get(url("change", backup)).content.decode()
    assert f'href="{url("undelete", backup)}">Undelete objects…</a>' in detail
    page = admin.get(url("undelete", backup)).content.decode()
    assert '<optgroup label="Recoveryapp">' in page
    assert '<option value="recoveryapp.Brewery">Brewerys (recoveryapp.Brewery)</option>' in page
    assert 'value="backups.' not in page and 'aria-describedby="undelete-pks-help"' in page

    # Refusals, on the form: no key, a key the backup does not hold.
    response = undelete(admin, backup, "recoveryapp.Brewery", " , ")
    assert "Name at least one primary key. Nothing was changed." in response.content.decode()
    response = undelete(admin, backup, "recoveryapp.Brewery", "9")
    assert response.context["step"] == "choose" and 'id="undelete-form"' in response.content.decode()
    assert messages_of(response) == [
        (
            "error",
            f"Nothing was undeleted from {backup.filename}: Not in the backup: recoveryapp.Brewery 9. Nothing was "
            "changed.",
        )
    ]

    response = undelete(admin, backup, "recoveryapp.Brewery", "1, 2")
    assert response.context["step"] == "preview"
    page = response.content.decode()
    for row in (
        "<tr><td>recoveryapp.Brewery</td><td>1</td><td>1</td></tr>",
        "<tr><td>recoveryapp.Recipe</td><td>1</td><td>1</td></tr>",
        "<tr><td>recoveryapp.Recipe_ingredients</td><td>1</td><td>",  # its own key, from a sequence
        "<tr><td>recoveryapp.Tasting</td><td>1</td><td>1</td></tr>",
        "<caption>There already, the same (left as they are)</caption>",
        "<tr><td>recoveryapp.Brewery</td><td>1</td></tr>",  # Malty
        "<tr><td>recoveryapp.Recipe</td><td>2</td><td>style</td></tr>",  # the conflict
    ):
        assert row in page, row
    assert hidden_fields(page, "undelete-confirm-form") == {
        "model": ["recoveryapp.Brewery"],
        "pks": ["1,2"],
        "post": ["yes"],
    }
    assert 'value="Yes, insert these 4 rows"' in page
    assert names(alias, Brewery) == ["Malty", "Opened today"]  # the dry run changed nothing

    response = undelete(admin, backup, "recoveryapp.Brewery", "1,2", confirmed=True)
    assert response.status_code == 302 and response["Location"] == url("change", backup)
    assert messages_of(admin.get(response["Location"])) == [
        (
            "success",
            f"Undeleted from {backup.filename} into the database {alias}: 4 rows inserted (recoveryapp.Brewery 1, "
            "recoveryapp.Recipe 1, recoveryapp.Recipe_ingredients 1, recoveryapp.Tasting 1); 1 there already; "
            "1 conflicts, not overwritten.",
        ),
        ("warning", "Conflict, not overwritten: recoveryapp.Recipe 2 (differs in style)."),
    ]
    assert names(alias, Brewery) == ["Hoppy", "Malty", "Opened today"]
    assert names(alias, Recipe) == ["Pale Ale", "Stout"]
    assert Recipe.objects.using(alias).get(pk=2).style == "porter"  # never overwritten
    assert list(Recipe.objects.using(alias).get(pk=1).ingredients.values_list("name", flat=True)) == ["Citra"]
    assert list(Tasting.objects.using(alias).values_list("note", flat=True)) == ["bright"]
    journal = Operation.objects.filter(action="undelete").order_by("started_at")
    assert [(record.status, record.details.get("dry_run"), record.origin) for record in journal] == [
        ("failed", None, Origin.ADMIN),
        ("succeeded", True, Origin.ADMIN),
        ("succeeded", False, Origin.ADMIN),
    ]


def test_undelete_with_nothing_missing_offers_nothing_to_confirm_and_needs_restore_models(admin):
    backup = brew_recipes("default")
    page = undelete(admin, backup, "recoveryapp.Recipe", "1").content.decode()
    assert '<p id="undelete-nothing">Nothing to insert: every row is in the database already.</p>' in page
    assert 'id="undelete-confirm-form"' not in page

    restorer = login(make_staff("restorer", "view_backup", "restore_backup", "restore_copy"))
    assert url("undelete", backup) not in restorer.get(url("change", backup)).content.decode()
    Recipe.objects.filter(pk=2).delete()
    assert restorer.get(url("undelete", backup)).status_code == 403
    assert undelete(restorer, backup, "recoveryapp.Recipe", "2", confirmed=True).status_code == 403
    assert names("default", Recipe) == ["Pale Ale"]
    assert Operation.objects.filter(action="undelete").count() == 1  # the admin's dry run above


def test_copies_and_model_restores_are_hidden_and_refused_without_their_permissions():
    backup = brew_recipes("default")
    restorer = login(make_staff("restorer", "view_backup", "restore_backup"))
    detail = restorer.get(url("change", backup)).content.decode()
    assert url("restore", backup) in detail  # the page has its buttons, only not these
    assert url("restore_copy", backup) not in detail and url("restore_models", backup) not in detail
    listing = restorer.get(CHANGELIST).content.decode()
    assert 'value="restore_selected"' in listing
    assert 'value="restore_copy_selected"' not in listing and 'value="restore_models_selected"' not in listing
    for page, data in (
        ("restore_copy", {"into": "hb_sneaky"}),
        ("restore_models", {"models": ["recoveryapp.Recipe"], "post": "yes"}),
    ):
        assert restorer.get(url(page, backup)).status_code == 403
        assert restorer.post(url(page, backup), data).status_code == 403
    assert not DatabaseCopy.objects.exists() and not Backup.objects.filter(trigger=Trigger.PRE_RESTORE).exists()
    assert not Operation.objects.filter(action__in=["restore-copy", "restore-models"]).exists()
    assert names("default", Recipe) == ["Pale Ale", "Stout"]

    copier = login(make_staff("copier", "view_backup", "restore_copy"))
    detail = copier.get(url("change", backup)).content.decode()
    assert url("restore_copy", backup) in detail and url("restore_models", backup) not in detail
    response = copier.post(CHANGELIST, {"action": "restore_copy_selected", "_selected_action": [backup.pk]})
    assert response.status_code == 302 and response["Location"] == url("restore_copy", backup)
    assert copier.get(url("restore_models", backup)).status_code == 403
    modeller = login(make_staff("modeller", "view_backup", "restore_models"))
    detail = modeller.get(url("change", backup)).content.decode()
    assert url("restore_models", backup) in detail and url("restore_copy", backup) not in detail
    response = modeller.post(CHANGELIST, {"action": "restore_models_selected", "_selected_action": [backup.pk]})
    assert response.status_code == 302 and response["Location"] == url("restore_models", backup)
    assert modeller.get(url("restore_copy", backup)).status_code == 403


def test_copies_and_model_restores_need_a_post_with_csrf(superuser):
    backup = brew_recipes("default")
    client = Client(enforce_csrf_checks=True)
    client.force_login(superuser)
    assert client.post(url("restore_copy", backup), {"into": "hb_forged"}).status_code == 403
    response = client.post(url("restore_models", backup), {"models": ["recoveryapp.Recipe"], "post": "yes"})
    assert response.status_code == 403
    assert not DatabaseCopy.objects.exists() and not Operation.objects.filter(action="restore-models").exists()
    Recipe.objects.filter(pk=2).delete()
    response = client.get(url("restore_models", backup), {"models": "recoveryapp.Recipe", "post": "yes"})
    assert response.status_code == 200 and response.context["step"] == "choose"  # a GET only shows the page
    assert names("default", Recipe) == ["Pale Ale"]


# -- delete -------------------------------------------------------------------------------------


def test_delete_one_removes_file_manifest_and_row(admin, backup_dir):
    backup = create()
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
    kept, first, second = create(), create(), create()
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
    backups = [create(), create()]
    response = delete_selected(admin, backups)
    assert messages_of(response) == [("success", "Successfully deleted 2 backups.")]
    assert not any(backup_dir.iterdir()) and not Backup.objects.exists()


def test_delete_is_hidden_and_refused_without_delete_backup(admin, backup_dir):
    backup = create()
    viewer = login(make_staff("viewer", "view_backup", "add_backup", "restore_backup"))
    assert 'value="delete_selected"' not in viewer.get(CHANGELIST).content.decode()
    assert viewer.get(url("delete", backup)).status_code == 403
    assert viewer.post(url("delete", backup), {"post": "yes"}).status_code == 403
    response = delete_selected(viewer, [backup])
    assert messages_of(response) == [("warning", "No action selected.")]
    assert (backup_dir / backup.filename).exists() and Backup.objects.exists()


# -- download -----------------------------------------------------------------------------------


def test_download_streams_the_file_as_an_attachment(admin, backup_dir):
    backup = create()
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
    backup = create()
    viewer = login(make_staff("viewer", "view_backup", "restore_backup"))
    page = viewer.get(CHANGELIST).content.decode()
    assert url("restore", backup) in page and url("download", backup) not in page
    assert url("download", backup) not in viewer.get(url("change", backup)).content.decode()
    assert viewer.get(url("download", backup)).status_code == 403
    downloader = login(make_staff("downloader", "view_backup", "download_backup"))
    assert url("download", backup) in downloader.get(url("change", backup)).content.decode()
    assert downloader.get(url("download", backup)).status_code == 200


def test_download_of_a_vanished_file_is_an_error_message(admin, backup_dir):
    backup = create()
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
    finished_restore(admin, brew)
    undo = Backup.objects.get(trigger="pre-restore")
    response = admin.get(HISTORY)
    assert response.status_code == 200
    [record] = response.context["cl"].result_list
    page = response.content.decode()
    for column, fact in (
        ("kind", "restore"),
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


def test_restore_history_lists_copies_model_restores_and_undeletes_by_their_kind(admin, settings):
    backup = brew_recipes("default")
    command = services.Actor.command()
    services.restore_models(backup.filename, actor=command, models=["recoveryapp.Tasting"], pre_restore_backup=False)
    services.undelete(backup.filename, actor=command, objects={"recoveryapp.Recipe": [1]}, dry_run=True)
    into = f"hb_history_copy{settings.SUFFIX}"
    services.restore_copy(backup.filename, actor=command, into=into)
    services.drop_copy(into, actor=command)

    page = admin.get(HISTORY).content.decode()
    assert sorted(re.findall(r'<td class="field-kind">([^<]*)</td>', page)) == [
        "restore as a copy",
        "restore chosen models",
        "undelete chosen objects (dry run)",
    ]  # and neither the backup nor the copy's drop, which are in the audit log only
    filtered = admin.get(HISTORY, {"kind": "restore-copy"}).context["cl"].result_list
    assert [(record.action, record.details["into"]) for record in filtered] == [("restore-copy", into)]
    assert 'href="?kind=undelete"' in page  # the filter offers each kind


def test_history_and_audit_log_are_read_only(admin, brew):
    finished_restore(admin, brew)
    record = Operation.objects.get(action="restore")
    for changelist, model in ((HISTORY, "restorehistory"), (AUDIT_LOG, "operation")):
        page = admin.get(changelist).content.decode()
        assert reverse(f"admin:backups_{model}_add") not in page
        assert 'value="delete_selected"' not in page
        assert re.search(r"\n\d+ entr(y|ies)\n", page) and " audit log\n" not in page
        change = reverse(f"admin:backups_{model}_change", args=[quote(record.pk)])
        detail = admin.get(change)
        assert detail.status_code == 200
        assert "historylink" not in detail.content.decode()
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
    backup = create(MARKUP)
    for page_url in (CHANGELIST, url("change", backup), url("restore", backup)):  # where descriptions show
        page = admin.get(page_url).content.decode()
        assert MARKUP not in page and "<b>bold</b>" not in page and '<script>alert("owned")' not in page
        assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in page
