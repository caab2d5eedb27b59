"""The admin in a real browser: Debian's Chromium, driven by Playwright, against a live server on
the real PostgreSQL server, with real worker processes for backups and restores. The list fits
the screen, a restore (and a copy) goes from the confirmation through the progress page to its
result, the overview tells a stale database from a healthy one, and axe-core (from npm, see
package.json) finds no serious or critical accessibility violation on any of these pages. The
screenshots in docs/ come from here.

Playwright's sync API keeps an asyncio loop running in this thread, so Django refuses ORM calls
made inside the ``sync_playwright()`` block (SynchronousOnlyOperation): the tests prepare and
check the database outside it, and the live server's own thread does the rest.
"""

import os
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Group
from django.db import connection
from django.urls import reverse
from playwright.sync_api import expect, sync_playwright

from backups import services
from backups.models import Backup, BackupStatus, DatabaseCopy, Operation
from backups.services.jobs import RestoreProgressFile
from tests.recoveryapp.models import Brewery

from .conftest import IN_CI, TableBlocker, brew_recipes, database_exists, names, pending_restore, read_copy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).parent.parent
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(__file__).parent / "artifacts"
DOCS = ROOT / "docs"
# A bound on waiting for pages (a restore runs in its worker meanwhile), not a measurement.
PATIENCE_MS = 120_000
SCREENS = [
    pytest.param({"width": 1280, "height": 800}, id="1280x800"),
    pytest.param({"width": 1920, "height": 1080}, id="1920x1080"),
]

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def unavailable(message):
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def chromium():
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} is missing: install Debian's chromium package (scripts/system-packages does)")
    ARTIFACTS.mkdir(exist_ok=True)
    return CHROMIUM


@pytest.fixture
def axe():
    if not AXE.exists():
        unavailable(f"{AXE} is missing: run 'npm ci' (make test does)")
    return AXE


@contextmanager
def browser_page(chromium, live_server, viewport, color_scheme="light"):
    """A logged-in page as the superuser "root"."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=viewport, color_scheme=color_scheme)
        page.set_default_timeout(PATIENCE_MS)
        expect.set_options(timeout=PATIENCE_MS)
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "pw")
        page.click("input[type=submit]")
        expect(page.locator("#user-tools")).to_be_visible()
        try:
            yield page
        finally:
            browser.close()


def assert_on_screen(page, locator):
    """Visible without scrolling, in either direction: inside the viewport, and the element the
    browser finds at its centre (not a box that clips it, or something over it)."""
    box = locator.bounding_box()
    viewport = page.viewport_size
    assert box is not None, locator
    assert 0 <= box["x"] and box["x"] + box["width"] <= viewport["width"], (box, viewport)
    assert 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"], (box, viewport)
    centre = {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}
    assert locator.evaluate("(element, at) => element.contains(document.elementFromPoint(at.x, at.y))", centre)
    assert locator.evaluate(
        "element => { const box = element.closest('.results'); return !box || box.scrollWidth <= box.clientWidth; }"
    ), "the list scrolls sideways"


def assert_accessible(page, axe):
    """axe-core's verdict on the page as it is: no serious or critical violation."""
    page.add_script_tag(path=str(axe))
    violations = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    serious = [
        f"{violation['id']} ({violation['impact']}): {violation['help']} at "
        + ", ".join(node["target"][0] for node in violation["nodes"][:3])
        for violation in violations
        if violation["impact"] in ("serious", "critical")
    ]
    assert not serious, f"{page.url}: " + "; ".join(serious)


def backups_with_history():
    """A few good backups, older ones among them, and a failed attempt (hidden by default)."""
    actor = services.Actor.command()
    made = []
    for hours, description in (
        (50, "nightly"),
        (26, "nightly"),
        (3, "Before the v2.0 upgrade of the brewing schedule"),
    ):
        backup = services.create_backup(actor=actor, description=description)
        Backup.objects.filter(pk=backup.pk).update(
            created_at=backup.created_at - timedelta(hours=hours),
            finished_at=backup.finished_at - timedelta(hours=hours),
        )
        made.append(backup)
    failed = services.create_backup(actor=actor)
    Backup.objects.filter(pk=failed.pk).update(
        status=BackupStatus.FAILED, error="pg_dump: server closed the connection"
    )
    return made


@pytest.mark.parametrize("viewport", SCREENS)
def test_the_first_row_shows_its_status_and_restore_button_without_scrolling(
    live_server, superuser, chromium, axe, viewport
):
    backups_with_history()
    newest = Backup.objects.restorable().first()
    with browser_page(chromium, live_server, viewport) as page:
        page.goto(f"{live_server.url}/admin/backups/backup/")
        first_row = page.locator("#result_list tbody tr").first
        expect(first_row).to_contain_text(newest.filename)
        assert_on_screen(page, first_row.locator(".field-status_badge .backup-badge"))
        assert_on_screen(page, first_row.get_by_role("link", name=f"Restore {newest.filename}"))
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        expect(page.locator("#result_list")).not_to_contain_text("server closed the connection")
        assert_accessible(page, axe)
        name = f"admin-backups-list-{viewport['width']}.png"
        page.screenshot(path=ARTIFACTS / name)
        if viewport["width"] == 1280:
            page.screenshot(path=DOCS / "admin-backups.png")


def test_back_up_change_restore_through_the_progress_page_and_see_it_in_the_history(
    live_server, superuser, chromium, backup_dir
):
    Group.objects.create(name="Pale Ale fans")
    group_url = f"{live_server.url}/admin/auth/group/{Group.objects.get().pk}/change/"
    backups_url = f"{live_server.url}/admin/backups/backup/"
    database_name = connection.settings_dict["NAME"]

    with browser_page(chromium, live_server, {"width": 1280, "height": 800}) as page:
        page.goto(backups_url)
        page.fill("#create-backup-description", "Before renaming the brewers' group")
        page.click("#create-backup-form button")
        expect(page.locator(".messagelist .success")).to_contain_text("created")  # after its progress page
        row = page.locator("#result_list tbody tr", has_text="Before renaming")
        expect(row).to_contain_text("succeeded")

        page.goto(group_url)
        page.fill("#id_name", "Stout fans")
        page.click("input[name=_save]")
        expect(page.locator("#result_list")).to_contain_text("Stout fans")

        page.goto(backups_url)
        page.locator("#result_list tbody tr", has_text="Before renaming").get_by_role("link", name="Restore").click()
        expect(page.locator("#restore-target")).to_contain_text(database_name)
        expect(page.locator("#restore-source")).to_contain_text("Before renaming the brewers' group")
        button = page.locator("#restore-button")
        expect(button).to_be_disabled()
        page.fill("#id_confirm_database", "hoppybrew")
        expect(button).to_be_disabled()
        page.fill("#id_confirm_database", database_name)
        expect(button).to_be_enabled()
        page.screenshot(path=ARTIFACTS / "admin-restore-confirmation.png", full_page=True)
        button.click()

        expect(page.locator("#job-progress")).to_be_visible()
        assert "/admin/backups/backup/restores/" in page.url
        progress_url = page.url
        # The worker runs on; the page polls, then reloads itself onto the result.
        expect(page.locator("#restore-outcome")).to_contain_text("was restored from")
        expect(page.locator("#undo")).to_contain_text("To undo this restore, restore")
        assert page.url == progress_url
        page.screenshot(path=ARTIFACTS / "admin-restore-result.png", full_page=True)
        page.reload()  # the outcome is the journal's, not the page's
        expect(page.locator("#restore-outcome")).to_contain_text("was restored from")

        page.goto(f"{live_server.url}/admin/auth/group/")
        expect(page.locator("#result_list")).to_contain_text("Pale Ale fans")
        expect(page.locator("#result_list")).not_to_contain_text("Stout fans")

        page.goto(f"{live_server.url}/admin/backups/restorehistory/")
        history = page.locator("#result_list tbody tr")
        expect(history).to_have_count(1)
        expect(history).to_contain_text("root")
        expect(history).to_contain_text("succeeded")
        expect(history).to_contain_text("127.0.0.1")

        page.goto(backups_url)
        expect(page.locator("#result_list tbody tr")).to_have_count(2)  # the backup and the pre-restore one

        # What a description says is shown, never run.
        page.fill("#create-backup-description", "<script>window.injected = true</script><b>bold</b>")
        page.click("#create-backup-form button")
        expect(page.locator("#result_list")).to_contain_text("<script>window.injected = true</script><b>bold</b>")
        assert page.evaluate("window.injected") is None
        assert page.locator("#result_list b").count() == 0

    assert Group.objects.get().name == "Pale Ale fans"
    restore = Operation.objects.get(action="restore")
    assert (restore.status, restore.origin, restore.actor) == ("succeeded", "admin", "root")
    assert Backup.objects.filter(trigger="pre-restore").count() == 1
    assert restore.details["pre_restore_backup"] == Backup.objects.get(trigger="pre-restore").filename


@pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])
@pytest.mark.parametrize("viewport", SCREENS)
def test_the_overview_shows_a_stale_database_as_stale(live_server, superuser, chromium, axe, settings, viewport):
    settings.BACKUP_DATABASES = ["default", "sqlite"]
    settings.BACKUP_MAX_AGE_HOURS = 24
    backups_with_history()
    old = services.create_backup(actor=services.Actor.command(), database="sqlite")
    Backup.objects.filter(pk=old.pk).update(
        created_at=old.created_at - timedelta(hours=30), finished_at=old.finished_at - timedelta(hours=30)
    )
    with browser_page(chromium, live_server, viewport) as page:
        page.goto(f"{live_server.url}/admin/backups/")
        page.get_by_role("link", name="Overview: the status of every database").click()
        expect(page.locator("#database-sqlite .backup-state-label")).to_have_text("stale")
        expect(page.locator("#database-sqlite .backup-reasons")).to_contain_text("30 hours old (limit 24 hours)")
        expect(page.locator("#database-default .backup-state-label")).to_have_text("failing")  # its latest attempt
        expect(page.locator("#database-default svg circle")).to_have_count(2 * 3)
        expect(page.locator("#failures")).to_contain_text("server closed the connection")
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        assert_accessible(page, axe)
        page.screenshot(path=ARTIFACTS / f"admin-overview-{viewport['width']}.png", full_page=True)
        if viewport["width"] == 1280:
            page.screenshot(path=DOCS / "admin-overview.png", full_page=True)


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
def test_detail_confirmation_and_progress_pages_have_no_serious_accessibility_violations(
    live_server, superuser, chromium, axe, color_scheme
):
    [*_, backup] = backups_with_history()
    services.verify_backup(backup.filename, actor=services.Actor.command(), level="checksum")
    # A restore whose worker (this process) is halfway through loading, as far as the page can tell.
    job = pending_restore(backup)
    RestoreProgressFile(job.pk).replayed(read=96 << 20, total=160 << 20, elapsed=12.0, final=False)
    pages = {
        "detail": reverse("admin:backups_backup_change", args=[quote(backup.pk)]),
        "confirmation": reverse("admin:backups_backup_restore", args=[quote(backup.pk)]),
        "copy": reverse("admin:backups_backup_restore_copy", args=[quote(backup.pk)]),
        "models": reverse("admin:backups_backup_restore_models", args=[quote(backup.pk)]),
        "undelete": reverse("admin:backups_backup_undelete", args=[quote(backup.pk)]),
        "progress": reverse("admin:backups_backup_restore_job", args=[job.pk]),
        "list": reverse("admin:backups_backup_changelist"),
        "overview": reverse("admin:backups_backup_overview"),
    }
    with browser_page(chromium, live_server, {"width": 1280, "height": 800}, color_scheme) as page:
        for name, path in pages.items():
            page.goto(live_server.url + path)
            if name == "progress":
                expect(page.locator("#job-phase")).to_have_text("Loading the backup into the database")
                expect(page.locator("#job-done")).to_have_text("96.0 MB of 160.0 MB (60%)")
            assert_accessible(page, axe)
            if name == "models":  # and the next step, what the choice would replace
                page.screenshot(path=ARTIFACTS / f"admin-restore-models-{color_scheme}.png", full_page=True)
                page.get_by_label("Users").check()
                page.click("#models-next-button")
                expect(page.locator("#models-to-replace")).to_contain_text("auth_user_groups")
                assert_accessible(page, axe)
                page.screenshot(path=ARTIFACTS / f"admin-restore-models-confirm-{color_scheme}.png", full_page=True)
            if name == "undelete":  # and the dry run's list: root has logged in since, a conflict
                page.select_option("#id_model", "auth.User")
                page.fill("#id_pks", str(superuser.pk))
                page.click("#undelete-next-button")
                expect(page.locator("#undelete-conflicts")).to_contain_text("last_login")
                assert_accessible(page, axe)
                page.screenshot(path=ARTIFACTS / f"admin-undelete-preview-{color_scheme}.png", full_page=True)
            if color_scheme == "light" and name in ("detail", "progress"):
                page.screenshot(path=DOCS / f"admin-{name}.png", full_page=True)


def test_restore_a_backup_as_a_copy_from_its_page_through_its_progress_and_drop_the_copy(
    live_server, superuser, chromium, axe, settings
):
    backup = brew_recipes("default")
    Brewery.objects.filter(pk=1).update(name="Renamed since")
    detail_url = live_server.url + reverse("admin:backups_backup_change", args=[quote(backup.pk)])
    into = f"hb_browser_copy{settings.SUFFIX}"
    # The worker's last step, recording the copy, waits on this lock (reads pass): the progress
    # page is seen while the job runs, however quick the copy.
    blocker = TableBlocker("backups_databasecopy", mode="SHARE")
    try:
        with browser_page(chromium, live_server, {"width": 1280, "height": 800}) as page:
            page.goto(detail_url)
            page.get_by_role("link", name="Restore as a copy…").click()
            expect(page.locator("#copy-source")).to_contain_text(backup.filename)
            page.get_by_label("Name of the new database").fill("not a name")
            page.click("#copy-button")
            expect(page.locator(".messagelist .error")).to_contain_text("was not restored as a copy")
            page.get_by_label("Name of the new database").fill(into)
            page.screenshot(path=ARTIFACTS / "admin-restore-copy.png", full_page=True)
            page.click("#copy-button")

            expect(page.locator("#job-progress")).to_be_visible()
            assert "/admin/backups/backup/restores/" in page.url
            progress_url = page.url
            expect(page.locator("#content-main")).to_contain_text(f"into the new database {into}")
            expect(page.locator("#job-phase")).to_have_text("Loading the backup into the database")
            expect(page.locator("#job-done")).to_contain_text("(100%)")
            assert_accessible(page, axe)
            page.screenshot(path=ARTIFACTS / "admin-restore-copy-progress.png", full_page=True)
            blocker.release()
            # The page polls, then reloads itself onto the result.
            expect(page.locator("#restore-outcome")).to_contain_text(f"was restored into the new database {into}")
            assert page.url == progress_url
            assert_accessible(page, axe)
            page.screenshot(path=ARTIFACTS / "admin-restore-copy-result.png", full_page=True)
            page.locator("#copy").get_by_role("link", name="Database copies").click()
            expect(page.locator("#result_list tbody tr", has_text=into)).to_contain_text(backup.filename)
            assert_accessible(page, axe)
        # Outside the browser's block: Django refuses database calls inside it (see the top).
        copied = read_copy("default", into, "SELECT name FROM recoveryapp_brewery ORDER BY id")
        assert copied == [("Hoppy",), ("Malty",)]
        assert names("default", Brewery) == ["Renamed since", "Malty"]

        with browser_page(chromium, live_server, {"width": 1280, "height": 800}) as page:
            page.goto(live_server.url + reverse("admin:backups_databasecopy_changelist"))
            page.locator("#result_list tbody tr", has_text=into).locator("input[type=checkbox]").check()
            page.select_option("select[name=action]", "drop_copies")
            page.click("button[name=index]")
            expect(page.locator(".messagelist .success")).to_contain_text(f"Dropped the copy {into}.")
    finally:
        blocker.release()
        if DatabaseCopy.objects.exists():
            services.drop_copy(into, actor=services.Actor.command())
    assert not database_exists("default", into)
    journal = Operation.objects.filter(action__in=["restore-copy", "drop-copy"], status="succeeded")
    assert sorted((operation.action, operation.origin) for operation in journal) == [
        ("drop-copy", "admin"),
        ("restore-copy", "admin"),
    ]
