"""Restore drills for a site whose database role may not create databases (as on managed
hosting): without BACKUP_VERIFY_DATABASE_URL they are said, once, not to be able to run; with it
they make their scratch database on that server and pass."""

import os

import pytest

from backups import checks, services
from backups.exceptions import DatabaseUnavailable
from backups.services.verification import run_scheduled_verification

from .conftest import as_superuser, rewrite_backup, scratch_pattern, server_connection, superuser_url

pytestmark = pytest.mark.django_db(transaction=True)
SUFFIX = os.environ.get("TEST_DB_SUFFIX", "")
ROLE = f"nocreatedb{SUFFIX}"
DATABASE = f"hoppybrew_nocreatedb{SUFFIX}"
SUPERUSER_URL = superuser_url("postgres")
COMMAND = services.Actor.command()


@pytest.fixture(scope="module")
def role_without_createdb():
    """A login role without CREATEDB that owns a database holding a table."""
    as_superuser(
        "postgres",
        f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)',
        f'DROP ROLE IF EXISTS "{ROLE}"',
        f'CREATE ROLE "{ROLE}" LOGIN NOCREATEDB',
        f'CREATE DATABASE "{DATABASE}" OWNER "{ROLE}"',
    )
    connection = server_connection(DATABASE, role=ROLE)
    with connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE brew (id integer PRIMARY KEY, name text)")
        cursor.execute("INSERT INTO brew VALUES (1, 'Pale Ale'), (2, 'Stout')")
    connection.close()
    yield
    as_superuser("postgres", f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)', f'DROP ROLE IF EXISTS "{ROLE}"')


@pytest.fixture
def site(role_without_createdb, extra_alias, settings):
    """The alias 'managed' on that database, as that role, covered by the scheduled jobs; one backup."""
    extra_alias("managed", NAME=DATABASE, USER=ROLE, PASSWORD="")
    settings.BACKUP_DATABASES = "managed"
    return services.create_backup(actor=COMMAND, database="managed")


def scratch_databases():
    return as_superuser("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{scratch_pattern(DATABASE)}'")


def test_without_a_drill_server_drills_are_said_to_be_impossible_once(site, caplog):
    [warning] = checks.check_drills(None)
    assert warning.id == "backups.W005"
    assert f"the database role '{ROLE}' may not create databases (CREATEDB)" in warning.msg
    assert "BACKUP_VERIFY_DATABASE_URL" in warning.hint

    report = services.check_health()
    assert report.healthy, report.problems  # a drill that cannot run is no outage
    assert report.warnings == [f"Restore drills of database 'managed' cannot run: {warning.msg.split(': ', 1)[1]}"]

    assert run_scheduled_verification() == []  # skipped, with the reason in the log, not failed daily
    assert "Scheduled restore drill of 'managed' skipped" in caplog.text
    assert services.get_backup(site.filename).verification is None

    with pytest.raises(DatabaseUnavailable, match="permission denied to create database") as raised:
        services.verify_backup(site.filename, actor=COMMAND, level="restore")
    assert "BACKUP_VERIFY_DATABASE_URL" in raised.value.message and "CREATEDB" in raised.value.message


def test_with_a_drill_server_the_drill_runs_there_and_passes(site, settings):
    settings.BACKUP_VERIFY_DATABASE_URL = SUPERUSER_URL
    assert checks.check_drills(None) == []
    assert services.check_health().warnings == []
    result = services.verify_backup(site.filename, actor=COMMAND, level="restore")
    assert result.passed, result.message
    assert result.details["tables_checked"] == 1 and result.details["scratch_database"] == "dropped"
    assert scratch_databases() == []


def test_a_drill_server_without_the_roles_the_backup_grants_to_says_so(site, settings, backup_dir):
    settings.BACKUP_VERIFY_DATABASE_URL = SUPERUSER_URL
    absent = f"hoppybrew_absent_reporter{SUFFIX}"
    rewrite_backup(backup_dir, site.filename, lambda sql: sql + f"\nGRANT SELECT ON public.brew TO {absent};\n")
    result = services.verify_backup(site.filename, actor=COMMAND, level="restore")
    assert not result.passed
    assert result.message.startswith("The backup could not be restored into the drill's scratch database:")
    assert f'role "{absent}" does not exist' in result.message
    assert "The drill's server lacks a role that the backup's GRANTs name" in result.message
    assert "the database was not changed" not in result.message  # no live database was involved
    assert scratch_databases() == []


def test_a_bad_drill_server_url_is_an_error_that_never_repeats_the_password(settings):
    settings.BACKUP_VERIFY_DATABASE_URL = "redis://drill:Sekrit-Drill-Pass@127.0.0.1/0"
    [error] = checks.check_settings(None, variables=["VERIFY_DATABASE_URL"])
    assert error.id == "backups.E001" and "BACKUP_VERIFY_DATABASE_URL" in error.msg and "'redis'" in error.msg
    assert "Sekrit" not in error.msg
