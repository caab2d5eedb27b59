"""Backup filenames: how they are made and the one pattern every request is checked against.

Filenames are never parsed for state (that lives in manifests and the catalog); the pattern only
decides whether a name may be looked up at all, before any file is touched.
"""

import re

from .exceptions import InvalidRequest

# <prefix>[_<alias>]_<YYYYMMDD_HHMMSS>[-<n>].sql.<gz|zst>[.age]; ASCII only ([0-9], not \d, which
# would admit other scripts' digits). The API description publishes the same pattern.
FILENAME_REGEX = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,150}_[0-9]{8}_[0-9]{6}(?:-[0-9]{1,4})?\.sql\.(?:gz|zst)(?:\.age)?$"
FILENAME_PATTERN = re.compile(FILENAME_REGEX)
NOT_A_FILENAME = "not a backup filename; expected a name like 'hoppybrew_backup_20241108_120000.sql.gz'."
# Database aliases appear in filenames, so they are held to the same characters.
ALIAS_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MANIFEST_SUFFIX = ".json"
MAX_LENGTH = 200


def is_backup_filename(name):
    return isinstance(name, str) and len(name) <= MAX_LENGTH and FILENAME_PATTERN.fullmatch(name) is not None


def validate_filename(name):
    """Return ``name`` if it is a backup filename, else raise ``InvalidRequest``.

    The pattern admits no path separators, dots outside the suffix, or NUL bytes, so a valid
    name can only ever refer to a file directly inside the backup storage.
    """
    if not isinstance(name, str) or not name:
        raise InvalidRequest("A backup filename is required.")
    if not is_backup_filename(name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise InvalidRequest(f"{shown!r} is {NOT_A_FILENAME}")
    return name


def manifest_name(filename):
    return filename + MANIFEST_SUFFIX


def base_name(prefix, alias, moment):
    """The name without sequence number or suffix; the alias appears unless it is 'default'."""
    parts = [prefix] if alias == "default" else [prefix, alias]
    return "_".join(parts + [moment.strftime("%Y%m%d_%H%M%S")])


def candidate_names(prefix, alias, moment, suffix, attempts=1000):
    """Names to try in order: the plain one, then -2, -3 ... for backups in the same second."""
    base = base_name(prefix, alias, moment)
    yield f"{base}{suffix}"
    for number in range(2, attempts + 1):
        yield f"{base}-{number}{suffix}"
