"""A stored backup file as an HTTP download, the same from the API and the admin."""

import base64

from django.http import FileResponse

from .storage import stream_size


def download_response(backup, stream):
    """The file as an attachment, with its size and its sha256 twice: ``X-Backup-SHA256`` in
    hex, as ``sha256sum`` prints it, and RFC 9530's ``Repr-Digest``."""
    response = FileResponse(stream, as_attachment=True, filename=backup.filename)
    response["Content-Type"] = "application/octet-stream"
    response["Content-Length"] = stream_size(stream)
    response["X-Backup-SHA256"] = backup.sha256
    response["Repr-Digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(backup.sha256)).decode()}:"
    return response
