"""Encryption at rest with age (https://age-encryption.org/v1).

Backups are compressed, then encrypted to the public keys in ``BACKUP_ENCRYPTION_RECIPIENTS``
(``.sql.gz.age``); the server that makes backups needs no secret. Restores decrypt with the
private key in ``BACKUP_ENCRYPTION_IDENTITY_FILE``. The files are standard age files:
``age -d -i KEY FILE | gunzip`` reads them without this app.

The work is done by pyrage (the Rust age library) in-process. Its ``encrypt_io``/``decrypt_io``
stream: measured here, peak memory stays flat from 16 MiB to 128 MiB of data. They pull from a
reader and push into a writer, while a backup pushes and a restore pulls; a pipe and a helper
thread join the two, and the helper's errors surface in the caller's thread.

Encryption is a layer of the codec (``Sealed``), so the backup and restore pipelines see one
compressor and one decompressor whatever the file is.
"""

import io
import os
import threading

from .conf import backup_settings
from .exceptions import BackupDamaged, ConfigurationError, EncryptionKeyError
from .streams import RawReader

SUFFIX = ".age"
FORMAT = "age-encryption.org/v1"
IDENTITY_SETTING = "BACKUP_ENCRYPTION_IDENTITY_FILE"


def is_encrypted(filename):
    return filename.endswith(SUFFIX)


def manifest_entry(filename):
    """What the manifest records about encryption: the format and the public keys, never a
    private key. None for a file that is not encrypted."""
    if not is_encrypted(filename):
        return None
    return {"format": FORMAT, "recipient_type": "X25519", "recipients": backup_settings.ENCRYPTION_RECIPIENTS}


class Sealed:
    """A codec whose output is encrypted: compress, then encrypt (``.sql.gz`` -> ``.sql.gz.age``)."""

    def __init__(self, codec, filename=None):
        self.codec = codec
        self.name = codec.name
        self.suffix = codec.suffix + SUFFIX
        self.filename = filename or "the backup"

    def compressor(self, raw):
        from pyrage import x25519

        recipients = backup_settings.ENCRYPTION_RECIPIENTS
        if not recipients:
            raise ConfigurationError(
                f"{self.filename} is to be encrypted but BACKUP_ENCRYPTION_RECIPIENTS is empty; set the public keys."
            )
        encryptor = EncryptingWriter(raw, [x25519.Recipient.from_str(key) for key in recipients])
        try:
            return SealedWriter(self.codec.compressor(encryptor), encryptor)
        except BaseException:
            encryptor.close()
            raise

    def decompressor(self, raw):
        decryptor = DecryptingReader(raw, load_identities(self.filename), self.filename)
        return SealedReader(self.codec.decompressor(decryptor), decryptor)


class SealedWriter:
    """Compressor over encryptor; closing finishes both, in that order."""

    def __init__(self, compressor, encryptor):
        self.compressor = compressor
        self.encryptor = encryptor

    def write(self, data):
        return self.compressor.write(data)

    def close(self):
        try:
            self.compressor.close()
        finally:
            self.encryptor.close()


class SealedReader(RawReader):
    """Decompressor over decryptor; closing stops both."""

    def __init__(self, decompressor, decryptor):
        self.decompressor = decompressor
        self.decryptor = decryptor

    def read(self, size=-1):
        return self.decompressor.read(size)

    def close(self):
        if not self.closed:
            try:
                self.decompressor.close()
            finally:
                self.decryptor.close()
        super().close()


class Recording:
    """Passes reads and writes through and remembers the first error of the wrapped stream,
    which pyrage would otherwise turn into a generic error (losing ENOSPC, say)."""

    def __init__(self, stream):
        self.stream = stream
        self.error = None

    def read(self, size=-1):
        try:
            return self.stream.read(size)
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def write(self, data):
        try:
            return self.stream.write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise


class EncryptingWriter:
    """Bytes written here are encrypted to ``recipients`` and written to ``raw``.

    ``close()`` writes the final age chunk and raises whatever went wrong on the way.
    """

    def __init__(self, raw, recipients):
        read_fd, write_fd = os.pipe()
        self._pipe = os.fdopen(write_fd, "wb")
        self._raw = Recording(raw)
        self._error = None
        self._thread = threading.Thread(
            target=self._encrypt, args=(os.fdopen(read_fd, "rb"), recipients), name="age-encrypt", daemon=True
        )
        self._thread.start()

    def _encrypt(self, reader, recipients):
        import pyrage

        try:
            with reader:  # closing it tells a blocked writer that the helper has stopped
                pyrage.encrypt_io(reader, self._raw, recipients)
        except BaseException as exc:
            self._error = exc

    def write(self, data):
        try:
            return self._pipe.write(data)
        except BrokenPipeError:
            self._finish()
            raise

    def flush(self):
        pass  # data reaches the storage through the helper; close() waits for all of it

    def close(self):
        if self._pipe.closed:
            return
        try:
            self._pipe.close()
        except BrokenPipeError:
            pass
        self._finish()

    def _finish(self):
        self._thread.join()
        error = self._raw.error or self._error
        if error is not None:
            raise error


class DecryptingReader(io.RawIOBase):
    """The plain content of an age file read from ``source``, decrypted as it is read.

    Every chunk of an age file is authenticated, so damage shows up as an error at that chunk;
    the error, not an early end of file, is what the reader sees, and a restore stops before
    the database commits. The helper thread starts on the first read.
    """

    def __init__(self, source, identities, filename):
        self._source = Recording(source)
        self._identities = identities
        self._filename = filename
        self._pipe = None
        self._thread = None
        self._error = None

    def readable(self):
        return True

    def _start(self):
        read_fd, write_fd = os.pipe()
        self._pipe = os.fdopen(read_fd, "rb")
        self._thread = threading.Thread(
            target=self._decrypt, args=(os.fdopen(write_fd, "wb"),), name="age-decrypt", daemon=True
        )
        self._thread.start()

    def _decrypt(self, writer):
        import pyrage

        try:
            with writer:
                pyrage.decrypt_io(self._source, writer, self._identities)
        except BaseException as exc:
            self._error = exc

    def readinto(self, buffer):
        if self._thread is None:
            self._start()
        count = self._pipe.readinto(buffer)
        if not count:
            self._thread.join()
            if self._source.error is not None:
                raise self._source.error
            if self._error is not None:
                raise self._explain(self._error)
        return count

    def _explain(self, error):
        import pyrage

        if isinstance(error, pyrage.DecryptError) and "no matching keys" in str(error).lower():
            return EncryptionKeyError(
                f"The key in {IDENTITY_SETTING} ({', '.join(public_keys(self._identities))}) does not decrypt "
                f"{self._filename}: it was encrypted to other keys. Nothing was changed."
            )
        if isinstance(error, pyrage.DecryptError):
            return BackupDamaged(f"{self._filename} is not a readable age file ({error}). Nothing was changed.")
        return BackupDamaged(
            f"{self._filename} failed authentication while being decrypted: it is damaged or was altered. "
            "Nothing was changed."
        )

    def close(self):
        if self._thread is not None and not self.closed:
            self._pipe.close()  # a helper still writing gets a broken pipe and stops
            self._thread.join()
        super().close()


def public_keys(identities):
    return [str(identity.to_public()) for identity in identities]


def load_identities(filename="the backup"):
    """The X25519 identities in BACKUP_ENCRYPTION_IDENTITY_FILE (as ``age-keygen`` writes it:
    comment lines and ``AGE-SECRET-KEY-1...`` lines). Errors name the file, never its content."""
    from pyrage import IdentityError, x25519

    path = backup_settings.ENCRYPTION_IDENTITY_FILE
    if path is None:
        raise EncryptionKeyError(
            f"{filename} is encrypted; set {IDENTITY_SETTING} to the age identity file (the private key) "
            "to restore it. Nothing was changed."
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise EncryptionKeyError(f"{IDENTITY_SETTING}: cannot read {path} ({reason}). Nothing was changed.") from None
    identities = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(x25519.Identity.from_str(line))
        except IdentityError:
            raise EncryptionKeyError(
                f"{IDENTITY_SETTING}: line {number} of {path} is not an age X25519 identity (AGE-SECRET-KEY-1...). "
                "Nothing was changed."
            ) from None
    if not identities:
        raise EncryptionKeyError(f"{IDENTITY_SETTING}: {path} holds no age identity. Nothing was changed.")
    return identities


def check_decryptable(filename, manifest):
    """Before a restore touches anything: an encrypted backup needs a readable identity whose
    public key is one of the recipients its manifest names."""
    if not is_encrypted(filename):
        return
    identities = load_identities(filename)
    recipients = (manifest.get("encryption") or {}).get("recipients") or []
    ours = public_keys(identities)
    if recipients and not set(ours) & set(recipients):
        raise EncryptionKeyError(
            f"{filename} was encrypted to {', '.join(recipients)}, but the key in {IDENTITY_SETTING} is "
            f"{', '.join(ours)}. Nothing was changed."
        )
