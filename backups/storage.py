"""Where backup files and their manifests live, behind one small interface.

Every backup is written to each destination (``BACKUP_DESTINATIONS``: storage URLs or STORAGES
aliases). Unset, there are one or two: the primary storage (``STORAGES["backups"]`` when the
site defines it, else the one ``BACKUP_STORAGE_URL`` names: ``s3://bucket/prefix`` through
django-storages' S3 backend, or ``file:///path``; else a local directory, ``BACKUP_DIR``) and an
off-site one (``STORAGES["backups_offsite"]`` or ``BACKUP_OFFSITE_STORAGE_URL``).

Local writes are atomic (temporary name, fsync, rename) and private (directory 0700, files
0600). S3 writes are multipart uploads that become an object only when complete, and are
aborted on any error; reads stream the object's body.
"""

import ctypes
import errno
import functools
import io
import json
import logging
import os
import re
import socket
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import FileSystemStorage, storages
from django.utils.functional import cached_property

from .compression import CHUNK_SIZE
from .conf import backup_settings
from .exceptions import BackupError, DiskFull, StorageFailed, reason_of

logger = logging.getLogger("backups")

PRIMARY = "primary"
OFFSITE = "offsite"
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# .<name>.<pid>@<host>.partial: the writer is known, so its leftovers can be recognised.
# Every this many bytes written, the kernel is asked to start writing the file to disk (see WriteBehind).
WRITE_BEHIND_BYTES = 8 * 1024 * 1024
SYNC_FILE_RANGE_WRITE = 2  # Linux's flag: start writing the dirty pages back, without waiting
PARTIAL_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[^/]+)\.partial$")


class BackupFileSystemStorage(FileSystemStorage):
    """A local directory that only its owner can read."""

    def __init__(self, location=None, **kwargs):
        kwargs.setdefault("file_permissions_mode", FILE_MODE)
        kwargs.setdefault("directory_permissions_mode", DIRECTORY_MODE)
        super().__init__(location=location, **kwargs)


def is_storage_failure(exc):
    """An error of the storage itself: the file system, or S3 (botocore)."""
    return isinstance(exc, OSError) or type(exc).__module__.startswith("botocore")


WRITE_REFUSED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def storage_error(exc, doing, storage=None, written=False):
    """Turn an OSError or an S3 error into the error a person can act on: what failed, in which
    storage (the setting that names it, and where it points), and what to do. ``written``: the
    failure was in a write, which is atomic, so that nothing was left behind."""
    where = f" ({storage.named()})" if storage is not None else ""
    outcome = " Nothing was written." if written else ""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return DiskFull(
            f"No space left on the backup storage{where} while {doing}.{outcome} "
            "Free space or run cleanup, then try again."
        )
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif type(exc).__module__.startswith("botocore"):
        # botocore's messages name the request and the service's answer, never the credentials.
        reason = str(exc).rstrip(".")
    else:
        reason = exc.__class__.__name__
    return StorageFailed(f"The backup storage{where} failed while {doing}: {reason}.{outcome}{advice(exc, storage)}")


def advice(exc, storage):
    """What to do about a storage failure, when it can be told."""
    if storage is None:
        return ""
    if storage.directory is not None and isinstance(exc, OSError) and exc.errno in WRITE_REFUSED_ERRNOS:
        return (
            f" Let the user {current_user()} write to {storage.directory} (or make it writable again), "
            f"or point {storage.setting} at a directory it can write to."
        )
    if storage.directory is not None and isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return f" Check that {storage.directory} is a directory, or point {storage.setting} at the right one."
    if storage.directory is None:
        return f" Check {storage.setting}, the S3 credentials and the bucket's permissions."
    return ""


def current_user():
    import getpass

    try:
        return repr(getpass.getuser())
    except Exception:
        return f"with uid {os.getuid()}"


def stream_size(stream):
    """The size of a stream ``BackupStorage.open`` returned."""
    size = getattr(stream, "size", None)
    return size if size is not None else os.fstat(stream.fileno()).st_size


class BackupStorage:
    """Backup files and manifests in one Django storage. ``where`` says where, for messages."""

    def __init__(self, storage, where="", setting="BACKUP_DIR"):
        self.storage = storage
        self.where = where or (storage.location if isinstance(storage, FileSystemStorage) else "")
        self.setting = setting  # what names this storage, for messages that say what to fix

    def named(self):
        """The setting that names this storage, and where it points."""
        return f"{self.setting}: {self.where}" if self.where and self.where != self.setting else self.setting

    @property
    def is_s3(self):
        # boto3 is slow to import; a storage can only be an S3Storage once its module is loaded.
        module = sys.modules.get("storages.backends.s3")
        return module is not None and isinstance(self.storage, module.S3Storage)

    @cached_property
    def directory(self):
        """The local directory, or None when the storage is not a local filesystem."""
        if isinstance(self.storage, FileSystemStorage):
            return Path(self.storage.location)
        return None

    def ensure_directory(self):
        if self.directory is not None and not self.directory.is_dir():
            try:
                self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
                os.chmod(self.directory, DIRECTORY_MODE)
            except OSError as exc:
                raise storage_error(exc, f"creating {self.directory}", self, written=True) from None

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def writer(self, name, overwrite=False):
        """A binary stream that becomes ``name`` only if the block completes without error.

        Until then the data sits under a temporary name that never lists as a backup.
        """
        if self.directory is None:
            with self._remote_writer(name, overwrite) as stream:
                yield stream
            return
        self.ensure_directory()
        final = self.directory / name
        partial = self.directory / f".{name}.{os.getpid()}@{socket.gethostname()}.partial"
        try:
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except OSError as exc:
            raise storage_error(exc, f"creating {name}", self, written=True) from None
        try:
            with WriteBehind(io.FileIO(descriptor, "wb")) as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            if overwrite:
                os.replace(partial, final)
            else:
                os.link(partial, final)  # unlike rename, never replaces an existing file
                os.unlink(partial)
            self._fsync_directory()
        except OSError as exc:
            _unlink_quietly(partial)
            raise storage_error(exc, f"writing {name}", self, written=True) from None
        except BaseException:
            _unlink_quietly(partial)
            raise

    @contextmanager
    def _remote_writer(self, name, overwrite):
        """S3File uploads a part whenever AWS_S3_FILE_BUFFER_SIZE bytes (5 MiB) have gathered in
        memory and completes the upload on close; only then does the object exist. On any
        error the upload is aborted, so no parts linger, and a new name that may have been
        completed is deleted. An existing object being replaced is left as it was."""
        try:
            stream = self.storage.open(name, "wb")
        except Exception as exc:
            raise storage_error(exc, f"creating {name}", self, written=True) from None
        try:
            yield stream
            stream.close()
        except BaseException as exc:
            abort = getattr(getattr(stream, "_multipart", None), "abort", None)
            if abort is not None:
                with suppress(Exception):
                    abort()
            if not overwrite:
                with suppress(Exception):
                    self.storage.delete(name)
            if is_storage_failure(exc):
                raise storage_error(exc, f"uploading {name}", self, written=True) from None
            raise

    def _fsync_directory(self):
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def write_json(self, name, data, overwrite=True):
        with self.writer(name, overwrite=overwrite) as stream:
            stream.write(json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")

    # -- reading ---------------------------------------------------------------------------

    def open(self, name):
        """A binary stream of the stored file; raises FileNotFoundError when there is none."""
        try:
            if self.directory is not None:
                return open(self.directory / name, "rb")
            stored = self.storage.open(name, "rb")
            if self.is_s3:
                from .s3 import stream_object

                return stream_object(stored)
            return stored
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise storage_error(exc, f"reading {name}", self) from None

    def missing(self, name):
        """Why ``name`` cannot be read although the catalog has it, for the ``BackupNotFound``
        a person reads: with what lies beside it when someone decompressed it by hand."""
        message = f"The file {name} is missing from the backup storage ({self.named()})."
        for suffix in (".age", ".gz", ".zst"):
            if not name.endswith(suffix):
                continue
            stem = name.removesuffix(suffix)
            try:
                beside = self.exists(stem)
            except StorageFailed:
                beside = False
            if beside:
                return (
                    f"{message} {stem} lies beside it: the file was decrypted or decompressed by hand (gunzip "
                    f"removes the original). Compressing it again makes a file with another checksum, which "
                    f"no restore accepts: restore {stem} by hand (README, 'Restoring without the app'), or "
                    f"put the original {name} back."
                )
        return message

    def read_json(self, name):
        """The parsed JSON file, or None when it does not exist or is not valid JSON."""
        try:
            with self.open(name) as stream:
                return json.loads(stream.read())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return None

    def exists(self, name):
        try:
            return self.storage.exists(name)
        except Exception as exc:
            raise storage_error(exc, f"looking for {name}", self) from None

    def delete(self, name):
        try:
            self.storage.delete(name)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise storage_error(exc, f"deleting {name}", self) from None

    def names(self):
        """Every file name directly in the storage."""
        if self.directory is not None:
            if not self.directory.is_dir():
                return []
            try:
                return [entry.name for entry in os.scandir(self.directory) if entry.is_file()]
            except OSError as exc:
                raise storage_error(exc, "listing the backups", self) from None
        try:
            return self.storage.listdir("")[1]
        except Exception as exc:
            raise storage_error(exc, "listing the backups", self) from None

    def remove_partial_files(self, older_than_seconds):
        """Delete leftovers of interrupted writes: those of dead processes on this host at once,
        any other once older than ``older_than_seconds``. Returns the names removed."""
        if self.is_s3:
            from .s3 import abort_stale_uploads

            try:
                return abort_stale_uploads(self.storage, older_than_seconds)
            except Exception as exc:
                raise storage_error(exc, "removing unfinished uploads", self) from None
        if self.directory is None or not self.directory.is_dir():
            return []
        removed = []
        host = socket.gethostname()
        now = time.time()
        for entry in os.scandir(self.directory):
            match = PARTIAL_PATTERN.match(entry.name)
            if not match or not entry.is_file():
                continue
            same_host = match["host"] == host
            if same_host and process_alive(int(match["pid"])):
                continue
            if same_host or now - entry.stat().st_mtime > older_than_seconds:
                _unlink_quietly(Path(entry.path))
                removed.append(entry.name)
        return removed


class WriteBehind(io.BufferedWriter):
    """A local file whose data goes to disk while it is being written, a few MiB behind, rather
    than all at the fsync that completes it: the kernel keeps a whole backup in memory otherwise
    (its writeback waits for gigabytes of dirty pages), and that fsync took 0.4 s of a 9 s backup
    of 240 MB, on one core, after the dump. The pages stay cached, for a drill or restore that
    reads them next. Where ``sync_file_range`` is missing (not Linux), only the fsync writes."""

    def __init__(self, raw):
        super().__init__(raw, CHUNK_SIZE)
        self.unsynced = 0

    def write(self, data):
        written = super().write(data)
        self.unsynced += written
        if self.unsynced >= WRITE_BEHIND_BYTES:
            self.unsynced = 0
            start_writeback(self.raw.fileno())
        return written


@functools.cache
def _sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return call


def start_writeback(descriptor):
    """Ask the kernel to start writing the file's dirty pages (best effort: a refusal only
    leaves them for the fsync)."""
    call = _sync_file_range()
    if call is not None and call(descriptor, 0, 0, SYNC_FILE_RANGE_WRITE) != 0:
        logger.debug("sync_file_range refused: %s", os.strerror(ctypes.get_errno()))


class FanOutWriter:
    """One stream written to every destination at once: each chunk goes to each destination's
    ``writer``, so the dump runs once and nothing waits in a temporary copy. A destination that
    fails is dropped (its write abandoned, leaving nothing behind) and its error kept in
    ``failures``; the others go on. Only when none is left does the write fail.

    Use as a context manager; afterwards ``written`` names the destinations that hold the file.
    """

    def __init__(self, destinations, name):
        self.destinations = destinations
        self.name = name
        self.open = {}  # destination name -> (writer context, stream)
        self.failures = {}  # destination name -> the error
        self.written = []

    def __enter__(self):
        for destination in self.destinations:
            context = destination.storage.writer(self.name)
            try:
                self.open[destination.name] = (context, context.__enter__())
            except Exception as exc:
                self.failures[destination.name] = exc
        self.require_one()
        return self

    def write(self, data):
        for name, (_context, stream) in list(self.open.items()):
            try:
                stream.write(data)
            except Exception as exc:
                self.drop(name, exc)
        self.require_one()
        return len(data)

    def flush(self):
        for name, (_context, stream) in list(self.open.items()):
            try:
                stream.flush()
            except Exception as exc:
                self.drop(name, exc)
        self.require_one()

    def drop(self, name, exc):
        context, _stream = self.open.pop(name)
        try:
            context.__exit__(type(exc), exc, exc.__traceback__)  # abandons the write
        except Exception as raised:  # the writer's own account of it (StorageFailed, DiskFull)
            exc = raised
        self.failures[name] = exc

    def require_one(self):
        if not self.open:
            errors = list(self.failures.values())
            raise (
                errors[0]
                if len(errors) == 1
                else StorageFailed(
                    "Every backup destination failed: "
                    + "; ".join(f"{name}: {failure_reason(exc)}" for name, exc in self.failures.items())
                )
            )

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None:  # the dump failed: no destination keeps anything
            for context, _stream in self.open.values():
                with suppress(Exception):
                    context.__exit__(exc_type, exc, traceback)
            self.open.clear()
            return False
        for name, (context, _stream) in list(self.open.items()):
            try:
                context.__exit__(None, None, None)  # completes the file (rename, upload)
            except Exception as failure:
                self.open.pop(name)
                self.failures[name] = failure
        self.require_one()
        self.written = list(self.open)
        return False


def failure_reason(exc):
    """What a person is told about a destination's error; one nobody expected is logged whole."""
    if is_storage_failure(exc):
        exc = storage_error(exc, "writing")
    elif not isinstance(exc, BackupError):
        logger.error("Unexpected error of a backup destination", exc_info=exc)
    return reason_of(exc)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class Destination:
    """A storage every backup is written to. ``verify``: each copy is read back and its sha256
    checked before it counts. ``retention``: (option, value) pairs of its own policy."""

    name: str
    storage: BackupStorage
    verify: bool = True
    offsite: bool = False
    retention: tuple = ()


def destinations():
    """Every destination, in the order restores and downloads try them. Without
    BACKUP_DESTINATIONS: the primary storage, and the off-site one when there is one (the
    primary's copy is checked as it is written, so it is not read back)."""
    specs = backup_settings.DESTINATIONS
    if not specs:
        found = [Destination(PRIMARY, primary_storage(), verify=False)]
        offsite = get_offsite_storage()
        if offsite is not None:
            found.append(Destination(OFFSITE, offsite, offsite=True))
        return found
    return [
        Destination(spec.name, storage_of(spec), verify=spec.verify, offsite=spec.offsite, retention=spec.retention)
        for spec in specs
    ]


def storage_of(spec):
    """The storage of one BACKUP_DESTINATIONS entry; its errors name that entry."""
    setting = f"BACKUP_DESTINATIONS[{spec.name!r}]"
    if spec.storage_alias is not None:
        return BackupStorage(storages[spec.storage_alias], f'STORAGES["{spec.storage_alias}"]', setting)
    return BackupStorage(build_storage(spec.location, *s3_settings()), str(spec.location), setting)


def get_storage():
    """The first destination: where new backups reserve their names and restores look first.
    Built alone: what is wrong with a later destination must not stop work on the first."""
    specs = backup_settings.DESTINATIONS
    return storage_of(specs[0]) if specs else primary_storage()


def primary_storage():
    """The storage of BACKUP_STORAGE_URL or BACKUP_DIR, resolved when asked for (settings may
    change in tests)."""
    if "backups" in getattr(settings, "STORAGES", {}):
        return BackupStorage(storages["backups"], 'STORAGES["backups"]', 'STORAGES["backups"]')
    location = backup_settings.STORAGE_URL
    if location is not None:
        return BackupStorage(build_storage(location, *s3_settings()), str(location), "BACKUP_STORAGE_URL")
    return BackupStorage(BackupFileSystemStorage(location=backup_settings.DIR))


def get_offsite_storage():
    """The storage that holds the off-site copies, or None when there is none.

    A BACKUP_OFFSITE_STORAGE_URL that cannot be parsed counts as none here, with an error in
    the log: restores, downloads and listings must work whatever is wrong with the second copy.
    The start-up checks, and the commands that make copies, refuse it by name.
    """
    if "backups_offsite" in getattr(settings, "STORAGES", {}):
        return BackupStorage(storages["backups_offsite"], 'STORAGES["backups_offsite"]', 'STORAGES["backups_offsite"]')
    try:
        location = backup_settings.OFFSITE_STORAGE_URL
    except ImproperlyConfigured as exc:
        logger.error("No off-site copy is used or made: %s", exc)
        return None
    if location is None:
        return None
    return BackupStorage(build_storage(location, *s3_settings()), str(location), "BACKUP_OFFSITE_STORAGE_URL")


def backup_storages():
    """(name, storage) of every destination, in restore order."""
    return [(destination.name, destination.storage) for destination in destinations()]


def s3_settings():
    """The Django settings an S3 storage is built from, as part of the cache key."""
    return getattr(settings, "AWS_S3_ENDPOINT_URL", None), getattr(settings, "AWS_S3_REGION_NAME", None)


@functools.lru_cache(maxsize=8)
def build_storage(location, endpoint_url, region_name):
    """One storage object per place: an S3 storage holds a boto3 session and its connections,
    which are slow to make and safe to share between threads. Credentials come from boto3's
    own chain: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws, or an instance role."""
    if location.scheme == "file":
        return BackupFileSystemStorage(location=location.path)
    from .s3 import BackupS3Storage

    return BackupS3Storage(
        bucket_name=location.bucket, location=location.prefix, endpoint_url=endpoint_url, region_name=region_name
    )
