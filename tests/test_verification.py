"""Verification by checksum and by restore drill, on every engine: good backups pass; a flipped
byte, a truncated file and a dump that lost a table's rows are caught; the live database is
never touched; the outcome is recorded, shown and warned about."""

import gzip
import re
import tempfile
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from backups import services
from backups.models import Backup, Operation
from backups.services.verification import run_scheduled_verification

from .conftest import (
    ALIASES,
    BREW_ROWS,
    backup_of,
    brew_rows,
    create_brew,
    execute,
    fetch,
    flip_byte,
    read_manifest,
    rewrite_backup,
    truncate_and_resign,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=ALIASES)
COMMAND = services.Actor.command()
LEVELS = ["checksum", "restore"]


@pytest.fixture(params=ALIASES)
def alias(request):
    return request.param


@pytest.fixture
def brewed(alias):
    """A backup of a database holding the brew table."""
    create_brew(alias)
    return backup_of(alias)


def verify(backup, level):
    return services.verify_backup(backup.filename, actor=COMMAND, level=level)


def scratch_databases(alias):
    """This test database's drill scratch databases (other suites may be drilling alongside)."""
    if alias == "sqlite":
        return sorted(path.name for path in Path(tempfile.gettempdir()).glob("hoppybrew-drill-*"))
    pattern = connections[alias].settings_dict["NAME"].replace("_", "\\_") + "\\_drill\\_%"
    if alias == "default":
        return fetch("default", f"SELECT datname FROM pg_database WHERE datname LIKE '{pattern}'")
    return fetch("mariadb", f"SHOW DATABASES LIKE '{pattern}'")


@pytest.mark.parametrize("level", LEVELS)
def test_a_good_backup_passes_and_the_outcome_is_recorded(brewed, alias, level, backup_dir):
    execute(alias, "UPDATE brew SET name = 'changed since'")
    scratch_before = scratch_databases(alias)
    result = verify(brewed, level)
    assert result.passed, result.message
    assert brew_rows(alias) == [
        (1, "changed since", "citra"),
        (2, "changed since", "roasty\nand dark"),
        (3, "changed since", None),
    ]
    row = Backup.objects.get(filename=brewed.filename)
    assert row.verified_at is not None
    assert row.verification["level"] == level and row.verification["passed"] is True
    assert read_manifest(backup_dir, brewed.filename)["verification"]["passed"] is True
    if level == "restore":
        assert result.details["tables_checked"] >= 1 and result.details["lines_compared"] > 10
        assert scratch_databases(alias) == scratch_before


@pytest.mark.parametrize("level", LEVELS)
def test_one_flipped_byte_is_caught(brewed, backup_dir, level):
    flip_byte(backup_dir / brewed.filename)
    result = verify(brewed, level)
    assert not result.passed
    assert "does not match its manifest" in result.message
    assert Backup.objects.get(filename=brewed.filename).verification["passed"] is False
    assert Operation.objects.get(action="verify").status == "failed"


@pytest.mark.parametrize("level", LEVELS)
def test_a_truncated_file_is_caught_even_when_its_manifest_was_rewritten_to_match(brewed, backup_dir, level):
    truncate_and_resign(backup_dir, brewed.filename)
    result = verify(brewed, level)
    assert not result.passed
    assert f"{brewed.filename} cannot be decompressed" in result.message


def without_brew_rows(sql):
    """The dump with the brew table's rows removed, in each engine's dump format."""
    if "COPY public.brew " in sql:
        return re.sub(r"(COPY public\.brew [^\n]*\n).*?(\n\\\.\n)", r"\1\\.\n", sql, flags=re.S)
    if 'INSERT INTO "brew"' in sql:
        return re.sub(r'INSERT INTO "brew" VALUES\(.*?\);\n', "", sql, flags=re.S)
    return re.sub(r"INSERT INTO `brew` VALUES[^;]*;\n", "", sql, flags=re.S)


def test_a_dump_missing_a_tables_rows_fails_the_drill(brewed, backup_dir):
    before = gzip.decompress((backup_dir / brewed.filename).read_bytes()).decode()
    rewrite_backup(backup_dir, brewed.filename, without_brew_rows)
    after = gzip.decompress((backup_dir / brewed.filename).read_bytes()).decode()
    assert "Pale Ale" in before and "Pale Ale" not in after
    result = verify(brewed, "restore")
    assert not result.passed
    assert re.search(r"Table \S*brew\S* has 0 rows after the restore; the backup recorded 3", result.message)
    assert result.details["expected_rows"] == 3 and result.details["found_rows"] == 0


# -- entry points, warnings, the scheduled drill ---------------------------------------------------


@pytest.mark.parametrize("alias", ["default"])
def test_the_api_verifies_and_shows_the_outcome(brewed, api):
    response = api.post(f"/backups/{brewed.filename}/verify", {"level": "restore"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["filename"] == brewed.filename and body["passed"] is True and body["level"] == "restore"
    shown = api.get(f"/backups/{brewed.filename}").json()
    assert shown["verified_at"] and shown["verification"]["passed"] is True
    listed = api.get("/backups").json()[0]
    assert listed["verification"]["level"] == "restore"
    bad = api.post(f"/backups/{brewed.filename}/verify", {"level": "thorough"}, format="json")
    assert bad.status_code == 400


@pytest.mark.parametrize("alias", ["default"])
def test_the_command_verifies_latest_and_all_and_fails_on_a_bad_backup(brewed, backup_dir):
    out = StringIO()
    call_command("backups", "verify", "--latest", "--level", "restore", stdout=out)
    assert f"PASSED  {brewed.filename}" in out.getvalue()
    listing = StringIO()
    call_command("backups", "list", stdout=listing)
    assert "passed (restore)," in listing.getvalue()
    (backup_dir / brewed.filename).write_bytes(b"garbage")
    with pytest.raises(CommandError, match="1 of 1 backups failed verification"):
        call_command("backups", "verify", "--all", stdout=StringIO())


@pytest.mark.parametrize("alias", ["default"])
def test_restoring_an_unverified_or_failed_backup_warns(brewed):
    result = services.restore_backup(brewed.filename, actor=COMMAND, pre_restore_backup=False)
    assert any("never been verified" in warning for warning in result.warnings)
    verify(brewed, "checksum")
    result = services.restore_backup(brewed.filename, actor=COMMAND, pre_restore_backup=False)
    assert not any("verif" in warning for warning in result.warnings)
    Backup.objects.filter(pk=brewed.pk).update(verification={"passed": False, "level": "restore", "message": "bad"})
    result = services.restore_backup(brewed.filename, actor=COMMAND, pre_restore_backup=False)
    assert any("failed its last verification (bad)" in warning for warning in result.warnings)
    assert brew_rows("default") == BREW_ROWS


@pytest.mark.parametrize("alias", ["default"])
def test_the_scheduled_drill_checks_the_newest_backup_once(brewed, api, caplog):
    newer = services.create_backup(actor=COMMAND)
    results = run_scheduled_verification()
    assert [r.filename for r in results] == [newer.filename]
    assert results[0].passed and results[0].level == "restore"
    assert api.get(f"/backups/{newer.filename}").json()["verification"]["level"] == "restore"
    assert run_scheduled_verification() == []  # already drilled
    assert "Running scheduled backup verification" in caplog.text
