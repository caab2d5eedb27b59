"""The admin in a real browser: Debian's Chromium, driven by Playwright, against a live server on
the real PostgreSQL server. Log in, back up, change data, restore it through the confirmation
page, and see the old data back and the restore in the history.

Playwright's sync API keeps an asyncio loop running in this thread, so Django refuses ORM calls
made inside the ``sync_playwright()`` block (SynchronousOnlyOperation): the test prepares and
checks the database outside it, and the live server's own thread does the rest.
"""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from playwright.sync_api import expect, sync_playwright

from backups.models import Backup, Operation

from .conftest import IN_CI

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
ARTIFACTS = Path(__file__).parent / "artifacts"
# A bound on waiting for pages (a restore runs while the result page loads), not a measurement.
PATIENCE_MS = 120_000

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def chromium():
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing: install Debian's chromium package (scripts/system-packages does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    ARTIFACTS.mkdir(exist_ok=True)
    return CHROMIUM


def test_back_up_change_restore_and_see_it_in_the_history(live_server, superuser, chromium, backup_dir):
    Group.objects.create(name="Pale Ale fans")
    group_url = f"{live_server.url}/admin/auth/group/{Group.objects.get().pk}/change/"
    backups_url = f"{live_server.url}/admin/backups/backup/"
    database_name = connection.settings_dict["NAME"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1920, "height": 600})
        page.set_default_timeout(PATIENCE_MS)
        expect.set_options(timeout=PATIENCE_MS)

        page.goto(f"{live_server.url}/admin/login/?next=/admin/backups/backup/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "pw")
        page.click("input[type=submit]")
        expect(page.locator("#create-backup-form")).to_be_visible()

        page.fill("#create-backup-description", "Before renaming the brewers' group")
        page.click("#create-backup-form button")
        expect(page.locator(".messagelist .success")).to_contain_text("created")
        row = page.locator("#result_list tbody tr", has_text="Before renaming")
        expect(row).to_contain_text("succeeded")
        page.screenshot(path=ARTIFACTS / "admin-backups-list.png", full_page=True)

        page.goto(group_url)
        page.fill("#id_name", "Stout fans")
        page.click("input[name=_save]")
        expect(page.locator("#result_list")).to_contain_text("Stout fans")

        page.goto(backups_url)
        page.locator("#result_list tbody tr", has_text="Before renaming").get_by_role("link", name="Restore…").click()
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

        expect(page.locator("#restore-outcome")).to_contain_text("was restored from")
        expect(page.locator("#undo")).to_contain_text("To undo this restore, restore")
        page.screenshot(path=ARTIFACTS / "admin-restore-result.png", full_page=True)

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
        page.screenshot(path=ARTIFACTS / "admin-backups-after-restore.png", full_page=True)

        # What a description says is shown, never run.
        page.fill("#create-backup-description", "<script>window.injected = true</script><b>bold</b>")
        page.click("#create-backup-form button")
        expect(page.locator("#result_list")).to_contain_text("<script>window.injected = true</script><b>bold</b>")
        assert page.evaluate("window.injected") is None
        assert page.locator("#result_list b").count() == 0
        browser.close()

    assert Group.objects.get().name == "Pale Ale fans"
    restore = Operation.objects.get(action="restore")
    assert (restore.status, restore.origin, restore.actor) == ("succeeded", "admin", "root")
    assert Backup.objects.filter(trigger="pre-restore").count() == 1
    assert restore.details["pre_restore_backup"] == Backup.objects.get(trigger="pre-restore").filename
