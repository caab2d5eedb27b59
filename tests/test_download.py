"""GET /backups/{filename}/download: the stored file, streamed, whatever the client accepts;
errors stay JSON."""

import base64
import gzip
import hashlib
import subprocess

import pytest

from backups import services

from .conftest import make_staff, require_tool, token_client

pytestmark = pytest.mark.django_db(transaction=True)
COMMAND = services.Actor.command()


def assert_json_error(response, status, fragment):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()["status"] == "error" and fragment in response.json()["message"]


@pytest.mark.parametrize("accept", ["application/octet-stream", "*/*", "application/json", "text/html", None])
def test_the_file_is_streamed_with_its_length_name_and_checksum(api, backup_dir, accept):
    made = services.create_backup(actor=COMMAND)
    stored = (backup_dir / made.filename).read_bytes()
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    response = api.get(f"/backups/{made.filename}/download", **headers)
    assert response.status_code == 200
    assert response.streaming
    assert b"".join(response.streaming_content) == stored
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Length"] == str(len(stored))
    assert response["Content-Disposition"] == f'attachment; filename="{made.filename}"'
    digest = hashlib.sha256(stored).digest()
    assert response["X-Backup-SHA256"] == digest.hex() == made.sha256
    assert response["Repr-Digest"] == f"sha-256=:{base64.b64encode(digest).decode()}:"
    assert b"CREATE TABLE" in gzip.decompress(stored)


def test_errors_stay_json_whatever_the_client_accepts(api, backup_dir):
    octets = {"HTTP_ACCEPT": "application/octet-stream"}
    assert_json_error(
        api.get("/backups/hoppybrew_backup_19990101_000000.sql.gz/download", **octets), 404, "No backup named"
    )
    assert_json_error(api.get("/backups/passwords.txt/download", **octets), 400, "not a backup filename")
    made = services.create_backup(actor=COMMAND)
    (backup_dir / made.filename).unlink()
    assert_json_error(api.get(f"/backups/{made.filename}/download", **octets), 404, "missing from the backup storage")


def test_downloading_needs_the_download_permission(db):
    made = services.create_backup(actor=COMMAND)
    viewer = token_client(make_staff("viewer", "view_backup"))
    downloader = token_client(make_staff("downloader", "view_backup", "download_backup"))
    assert_json_error(viewer.get(f"/backups/{made.filename}/download"), 403, "download backups")
    assert downloader.get(f"/backups/{made.filename}/download").status_code == 200


def test_an_encrypted_backup_downloads_encrypted_and_the_age_tool_reads_it(api, settings, age_key, tmp_path):
    require_tool("age")
    identity, public = age_key
    settings.BACKUP_ENCRYPTION_RECIPIENTS = public
    made = services.create_backup(actor=COMMAND)
    response = api.get(f"/backups/{made.filename}/download")
    downloaded = tmp_path / made.filename
    downloaded.write_bytes(b"".join(response.streaming_content))
    assert downloaded.read_bytes().startswith(b"age-encryption.org/v1\n")
    plain = subprocess.run(["age", "-d", "-i", str(identity), str(downloaded)], capture_output=True, check=True)
    assert b"CREATE TABLE" in gzip.decompress(plain.stdout)
