"""S3-compatible object storage through django-storages' S3 backend.

Imported only when a storage URL or STORAGES names S3: boto3 takes a third of a second to import.
"""

import datetime

from botocore.exceptions import ClientError
from storages.backends.s3 import S3Storage

from .naming import MANIFEST_SUFFIX, is_backup_filename
from .streams import RawReader


class BackupS3Storage(S3Storage):
    """django-storages' S3 backend with content types fit for backups.

    Left to guess, it labels ``.sql.gz`` objects ``Content-Encoding: gzip``, and HTTP clients
    then unpack them on download, leaving plain SQL under a ``.gz`` name.
    """

    def get_object_parameters(self, name):
        params = super().get_object_parameters(name)
        params.setdefault("ContentType", "application/json" if name.endswith(".json") else "application/octet-stream")
        return params


class ObjectStream(RawReader):
    """An object's body, read as it arrives over HTTP.

    Reading through S3File would first download the whole object into a SpooledTemporaryFile
    whose limit (AWS_S3_MAX_MEMORY_SIZE) defaults to 0, meaning "never spill to disk": a whole
    backup in memory.
    """

    def __init__(self, body, size):
        self._body = body
        self.size = size

    def read(self, size=-1):
        return self._body.read(None if size is None or size < 0 else size)

    def close(self):
        if not self.closed:
            self._body.close()
        super().close()


def stream_object(stored):
    """An ObjectStream for an S3File opened for reading (which has only fetched the headers)."""
    try:
        response = stored.obj.get()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise FileNotFoundError(stored.name) from None
        raise
    return ObjectStream(response["Body"], response["ContentLength"])


def abort_stale_uploads(storage, older_than_seconds):
    """A process killed while uploading leaves an unfinished multipart upload: it never lists,
    but its parts are kept (and billed). Abort those of backup files under the storage's prefix
    that started more than ``older_than_seconds`` ago; returns their names."""
    prefix = f"{storage.location}/" if storage.location else ""
    cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=older_than_seconds)
    aborted = []
    for upload in storage.bucket.multipart_uploads.filter(Prefix=prefix):
        name = upload.object_key[len(prefix) :]
        if upload.initiated <= cutoff and is_backup_filename(name.removesuffix(MANIFEST_SUFFIX)):
            upload.abort()
            aborted.append(name)
    return aborted
