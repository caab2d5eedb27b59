"""Encryption at rest with age, with keys made by age-keygen for each test: round trips on every
engine, the age command-line tool alone reading the files, and missing, wrong or damaged keys
and files leaving the database as it was."""

import hashlib
import json
import subprocess

import pytest
from django.core.exceptions import ImproperlyConfigured

from backups import checks, services
from backups.conf import backup_settings
from backups.exceptions import BackupDamaged, EncryptionKeyError
from backups.models import Backup

from .conftest import (
    alternate_gzip_levels,
    as_superuser,
    assert_one_gzip_member,
    by_hand_psql,
    execute,
    fetch,
    flip_byte,
    make_age_key,
    new_database,
    read_manifest,
    require_tool,
    resign,
)

ALIASES = ["default", "sqlite"]
pytestmark = pytest.mark.django_db(transaction=True, databases=ALIASES)
COMMAND = services.Actor.command()
ORIGINAL = [(1, "Pale Ale"), (2, "Stout")]


@pytest.fixture
def encrypted(settings, age_key):
    """Backups encrypted to a fresh key; the identity file is configured for restores."""
    identity, public = age_key
    settings.BACKUP_ENCRYPTION_RECIPIENTS = public
    settings.BACKUP_ENCRYPTION_IDENTITY_FILE = str(identity)
    return identity, public


def brew(alias, rows=ORIGINAL):
    execute(alias, "CREATE TABLE brew (id integer PRIMARY KEY, name text)")
    for number, name in rows:
        execute(alias, f"INSERT INTO brew VALUES ({number}, '{name}')")


def names(alias):
    return fetch(alias, "SELECT id, name FROM brew ORDER BY id")


def restore(filename, **options):
    options.setdefault("pre_restore_backup", False)
    return services.restore_backup(filename, actor=COMMAND, **options)


@pytest.mark.parametrize("alias", ALIASES)
def test_round_trip_stores_an_age_file_and_a_manifest_without_secrets(alias, encrypted, backup_dir):
    identity, public = encrypted
    brew(alias)
    made = services.create_backup(actor=COMMAND, database=alias)
    assert made.filename.endswith(".sql.gz.age") and made.encrypted
    stored = (backup_dir / made.filename).read_bytes()
    assert stored.startswith(b"age-encryption.org/v1\n")
    manifest = read_manifest(backup_dir, made.filename)
    assert manifest["encryption"] == {
        "format": "age-encryption.org/v1",
        "recipient_type": "X25519",
        "recipients": [public],
    }
    assert manifest["compression"] == "gzip"
    # The checksum covers the bytes as stored, so a file is checked without the key.
    assert manifest["sha256"] == hashlib.sha256(stored).hexdigest() and manifest["size_bytes"] == len(stored)
    secret = identity.read_text().split("AGE-SECRET-KEY-")[1].strip()
    assert "AGE-SECRET-KEY" not in json.dumps(manifest) and secret not in json.dumps(manifest)
    execute(alias, "UPDATE brew SET name = 'Porter'")
    restore(made.filename)
    assert names(alias) == ORIGINAL


def test_zstd_backups_are_encrypted_too(encrypted, settings):
    settings.BACKUP_COMPRESSION = "zstd"
    brew("default")
    made = services.create_backup(actor=COMMAND)
    assert made.filename.endswith(".sql.zst.age")
    execute("default", "DELETE FROM brew")
    restore(made.filename)
    assert names("default") == ORIGINAL


def test_the_age_tool_alone_decrypts_a_backup_that_psql_restores(encrypted, backup_dir, settings):
    """The README's by-hand restore, word for word: age -d -i KEY FILE | gunzip | psql."""
    require_tool("age")
    identity, _public = encrypted
    brew("default")
    made = services.create_backup(actor=COMMAND)
    with new_database(f"hoppybrew_by_hand_age{settings.SUFFIX}") as scratch:
        pipeline = f"age -d -i {identity} {backup_dir / made.filename} | gunzip | {by_hand_psql(scratch)}"
        subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True, capture_output=True)
        assert as_superuser(scratch, "SELECT name FROM brew ORDER BY id") == [("Pale Ale",), ("Stout",)]


READINGS = "SELECT md5(string_agg(readings::text, ',' ORDER BY id)) FROM readings"


def test_an_encrypted_backup_whose_gzip_changes_level_restores_by_hand_and_by_the_app(
    encrypted, backup_dir, settings, monkeypatch
):
    require_tool("age")
    identity, _public = encrypted
    chosen = alternate_gzip_levels(monkeypatch)
    brew("default")
    execute(
        "default",
        "CREATE TABLE readings AS SELECT i AS id, random() AS gravity, random() * 1000 AS temperature "
        "FROM generate_series(1, 100000) i",
    )
    readings = fetch("default", READINGS)
    made = services.create_backup(actor=COMMAND)
    assert chosen[:2] == [2, 3]  # from level 3 to 2 and back
    decrypted = subprocess.run(
        ["age", "-d", "-i", str(identity), str(backup_dir / made.filename)], check=True, capture_output=True
    ).stdout
    assert_one_gzip_member(decrypted)
    with new_database(f"hoppybrew_by_hand_age{settings.SUFFIX}") as scratch:
        pipeline = f"age -d -i {identity} {backup_dir / made.filename} | gunzip | {by_hand_psql(scratch)}"
        subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True, capture_output=True)
        assert as_superuser(scratch, READINGS) == readings
    execute("default", "DELETE FROM readings WHERE id % 2 = 0", "DELETE FROM brew")
    restore(made.filename)
    assert fetch("default", READINGS) == readings
    assert names("default") == ORIGINAL


def test_an_identity_file_with_several_keys_restores_backups_made_before_a_key_change(settings, tmp_path):
    old_key, new_key = tmp_path / "old.txt", tmp_path / "new.txt"
    settings.BACKUP_ENCRYPTION_RECIPIENTS = make_age_key(old_key)
    brew("default")
    before = services.create_backup(actor=COMMAND)
    settings.BACKUP_ENCRYPTION_RECIPIENTS = make_age_key(new_key)
    execute("default", "UPDATE brew SET name = 'Porter' WHERE id = 1")
    after = services.create_backup(actor=COMMAND)
    both = tmp_path / "keys.txt"
    both.write_text(old_key.read_text() + new_key.read_text())
    settings.BACKUP_ENCRYPTION_IDENTITY_FILE = str(both)
    restore(before.filename)
    assert names("default") == ORIGINAL
    restore(after.filename)
    assert names("default") == [(1, "Porter"), (2, "Stout")]


# -- missing, wrong and damaged: a clear error, and the database as it was ----------------------


def test_a_missing_key_is_a_clear_error_before_anything_runs(encrypted, settings):
    brew("default")
    made = services.create_backup(actor=COMMAND)
    execute("default", "UPDATE brew SET name = 'Porter' WHERE id = 1")
    del settings.BACKUP_ENCRYPTION_IDENTITY_FILE
    with pytest.raises(EncryptionKeyError, match="set BACKUP_ENCRYPTION_IDENTITY_FILE"):
        restore(made.filename, pre_restore_backup=True)
    settings.BACKUP_ENCRYPTION_IDENTITY_FILE = "/nonexistent/backup-key.txt"
    with pytest.raises(EncryptionKeyError, match="cannot read /nonexistent/backup-key.txt"):
        restore(made.filename, pre_restore_backup=True)
    assert names("default") == [(1, "Porter"), (2, "Stout")]
    assert Backup.objects.count() == 1  # not even a pre-restore backup was taken


def test_a_wrong_key_is_a_clear_error_naming_both_public_keys(encrypted, settings, tmp_path):
    _identity, public = encrypted
    brew("default")
    made = services.create_backup(actor=COMMAND)
    execute("default", "UPDATE brew SET name = 'Porter' WHERE id = 1")
    other = tmp_path / "other-key.txt"
    other_public = make_age_key(other)
    settings.BACKUP_ENCRYPTION_IDENTITY_FILE = str(other)
    with pytest.raises(EncryptionKeyError) as raised:
        restore(made.filename, pre_restore_backup=True)
    assert public in raised.value.message and other_public in raised.value.message
    assert "AGE-SECRET-KEY" not in raised.value.message
    assert names("default") == [(1, "Porter"), (2, "Stout")]
    assert Backup.objects.count() == 1


def test_a_wrong_key_is_caught_by_decryption_when_the_manifest_names_no_recipients(
    encrypted, settings, tmp_path, backup_dir
):
    brew("default")
    made = services.create_backup(actor=COMMAND)
    manifest_path = backup_dir / f"{made.filename}.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["encryption"]
    manifest_path.write_text(json.dumps(manifest))
    execute("default", "UPDATE brew SET name = 'Porter' WHERE id = 1")
    other = tmp_path / "other-key.txt"
    make_age_key(other)
    settings.BACKUP_ENCRYPTION_IDENTITY_FILE = str(other)
    with pytest.raises(EncryptionKeyError, match="does not decrypt"):
        restore(made.filename)
    assert names("default") == [(1, "Porter"), (2, "Stout")]


def test_a_damaged_file_fails_its_checksum_before_anything_runs(encrypted, backup_dir):
    brew("default")
    made = services.create_backup(actor=COMMAND)
    flip_byte(backup_dir / made.filename)
    execute("default", "UPDATE brew SET name = 'Porter' WHERE id = 1")
    with pytest.raises(BackupDamaged, match="does not match its manifest"):
        restore(made.filename)
    assert names("default") == [(1, "Porter"), (2, "Stout")]


def test_damage_behind_a_matching_checksum_fails_authentication_and_rolls_back(encrypted, backup_dir):
    """The manifest is re-signed after the damage: decryption stops at the damaged chunk, after
    earlier chunks already reached psql, and the restore rolls back."""
    brew("default", rows=[])
    execute("default", "INSERT INTO brew SELECT g, md5(g::text) || md5(g || 'hops') FROM generate_series(1, 8000) g")
    made = services.create_backup(actor=COMMAND)
    path = backup_dir / made.filename
    assert path.stat().st_size > 3 * 64 * 1024  # several age chunks
    flip_byte(path, position=-100)
    resign(backup_dir, made.filename, path.read_bytes())
    execute("default", "DELETE FROM brew WHERE id > 10")
    with pytest.raises(BackupDamaged, match="failed authentication"):
        restore(made.filename)
    assert fetch("default", "SELECT count(*) FROM brew") == [(10,)]


def test_the_api_answers_a_wrong_key_with_json_and_changes_nothing(api, encrypted, settings, tmp_path):
    brew("default")
    made = services.create_backup(actor=COMMAND)
    execute("default", "UPDATE brew SET name = 'Porter' WHERE id = 1")
    other = tmp_path / "other-key.txt"
    make_age_key(other)
    settings.BACKUP_ENCRYPTION_IDENTITY_FILE = str(other)
    response = api.post("/backups/restore", {"filename": made.filename}, format="json")
    assert response.status_code == 503
    assert response.json()["status"] == "error" and "Nothing was changed" in response.json()["message"]
    assert names("default") == [(1, "Porter"), (2, "Stout")]


# -- configuration ------------------------------------------------------------------------------


def test_a_private_key_given_as_recipient_is_refused_without_repeating_it(settings, age_key):
    identity, _public = age_key
    secret = [line for line in identity.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-")][0]
    settings.BACKUP_ENCRYPTION_RECIPIENTS = secret
    errors = checks.check_settings(None)
    assert [error.id for error in errors] == ["backups.E001"]
    assert "BACKUP_ENCRYPTION_RECIPIENTS" in errors[0].msg and "private key" in errors[0].msg
    assert secret not in errors[0].msg and secret[15:] not in errors[0].msg


def test_recipients_must_be_age_public_keys(settings, age_key):
    _identity, public = age_key
    settings.BACKUP_ENCRYPTION_RECIPIENTS = f"{public}, age1notakey"
    with pytest.raises(ImproperlyConfigured, match="BACKUP_ENCRYPTION_RECIPIENTS: 'age1notakey' is not an age"):
        getattr(backup_settings, "ENCRYPTION_RECIPIENTS")  # noqa: B009 (the read is what raises)
    settings.BACKUP_ENCRYPTION_RECIPIENTS = f"{public}\n{public}"
    assert backup_settings.ENCRYPTION_RECIPIENTS == [public]


def test_an_unusable_or_world_readable_identity_file_is_a_warning(settings, tmp_path, age_key):
    identity, _public = age_key
    settings.BACKUP_ENCRYPTION_IDENTITY_FILE = str(tmp_path / "missing.txt")
    assert [warning.id for warning in checks.check_identity_file(None)] == ["backups.W003"]
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    settings.BACKUP_ENCRYPTION_IDENTITY_FILE = str(garbage)
    [warning] = checks.check_identity_file(None)
    assert warning.id == "backups.W003" and "NOTAKEY" not in warning.msg
    identity.chmod(0o644)
    settings.BACKUP_ENCRYPTION_IDENTITY_FILE = str(identity)
    assert [warning.id for warning in checks.check_identity_file(None)] == ["backups.W004"]
    identity.chmod(0o600)
    assert checks.check_identity_file(None) == []
