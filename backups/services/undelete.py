"""Undeleting: chosen objects (a model and primary keys) brought back from a backup with the
objects that depend on them, as Django's deletion collector finds them (the very list the admin's
delete confirmation shows), into the live database, where only the rows that are missing are
inserted. "A staff user deleted a brewery this morning, and with it all its recipes."

The backup is restored into a scratch database first, as for model restores, and the collector
runs there. Then, in one transaction on the live database: rows whose primary key is not there
are inserted, rows that are there with the same values are left as they are, and rows that are
there with other values are conflicts, listed and never overwritten. Rows to insert whose
foreign keys would point at rows missing live refuse the undelete, with their list: undelete
those rows too (which brings back what depends on them as well), so that what comes back is
always a whole deletion, never a row whose parent was chosen for it.
"""

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.contrib.admin.utils import NestedObjects
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.utils import timezone

from ..exceptions import InvalidRequest
from ..models import Action
from .backups import get_restorable_backup
from .journal import journal
from .model_restore import (
    SHOWN_VALUES,
    Dangling,
    backup_in_scratch,
    columns_of,
    insert_statement,
    models_named,
    refuse_missing_columns,
    reset_sequences,
)
from .restore import check_restore, refuse_inside_transaction

logger = logging.getLogger("backups")

# Keys per "IN (...)": well below every engine's limit on query parameters.
KEYS_PER_QUERY = 500


@dataclass(frozen=True)
class Conflict:
    """A row that is there live under the same primary key with other values: not overwritten."""

    model: str
    pk: object
    differs: tuple  # the fields whose values differ

    def __str__(self):
        return f"{self.model} {self.pk} (differs in {', '.join(self.differs)})"


@dataclass
class UndeleteResult:
    backup: object
    database: str
    dry_run: bool
    inserted: dict = field(default_factory=dict)  # label: primary keys inserted (in a dry run: to insert)
    unchanged: dict = field(default_factory=dict)  # label: rows that are there already, the same
    conflicts: list = field(default_factory=list)  # of Conflict
    finished_at: object = None
    warnings: list = field(default_factory=list)
    operation: object = None

    @property
    def summary(self):
        rows = sum(len(pks) for pks in self.inserted.values())
        done = f"{rows} rows would be inserted" if self.dry_run else f"{rows} rows inserted"
        parts = [
            f"{done} ({', '.join(f'{label} {len(pks)}' for label, pks in self.inserted.items())})" if rows else done
        ]
        if self.unchanged:
            parts.append(f"{sum(self.unchanged.values())} there already")
        if self.conflicts:
            parts.append(f"{len(self.conflicts)} conflicts, not overwritten")
        return "; ".join(parts)


def undelete(filename, *, actor, objects, target=None, dry_run=False):
    """Bring back the objects ``objects`` names ({"app.Model": [primary keys]}) and those that
    depend on them from the backup into its database (or ``target``), inserting only the rows
    that are missing there. ``dry_run``: find out what would be inserted and what conflicts,
    and change nothing."""
    refuse_inside_transaction()
    with journal(
        Action.UNDELETE, actor, filename=filename, database=target or "", permission="restore_models"
    ) as record:
        backup = get_restorable_backup(filename)
        chosen = resolve_objects(objects)
        alias = record.database = target or backup.database
        engine, manifest = check_restore(backup, alias)
        result = UndeleteResult(backup=backup, database=alias, dry_run=dry_run, operation=record)
        # A dry run only reads the live database: it may run beside backups, not during a restore.
        with engine.lock(exclusive=not dry_run):
            with backup_in_scratch(engine, filename, manifest, result.warnings) as scratch_connection:
                collected = collect_dependants(chosen, scratch_connection)
                refuse_missing_columns(collected, scratch_connection)
                insert_missing(collected, scratch_connection, alias, result)
        result.finished_at = timezone.now()
        record.message = f"{'Dry run of an undelete' if dry_run else 'Undeleted'} from {filename}: {result.summary}"
        record.details = {
            **record.details,
            "objects": {model._meta.label: [shown(model._meta.pk, pk) for pk in pks] for model, pks in chosen.items()},
            "dry_run": dry_run,
            "inserted": result.inserted,
            "unchanged": result.unchanged,
            "conflicts": [str(conflict) for conflict in result.conflicts],
            "warnings": result.warnings,
        }
    return result


def resolve_objects(objects):
    """{concrete model: [primary keys]} of ``objects``, {"app.Model": [primary keys]}."""
    if not isinstance(objects, dict) or not objects:
        raise InvalidRequest('Name the objects to undelete, e.g. {"recipes.Recipe": [1, 2]}. Nothing was changed.')
    chosen = {}
    for label, pks in objects.items():
        if "." not in str(label):
            raise InvalidRequest(f"Name a model, as app.Model, not {label!r}. Nothing was changed.")
        (model,) = models_named(label)
        if not isinstance(pks, list | tuple) or not pks:
            raise InvalidRequest(f"Name the primary keys of the {label} objects to undelete. Nothing was changed.")
        keys = [primary_key(model, label, pk) for pk in pks]
        chosen[model] = list(dict.fromkeys(chosen.get(model, []) + keys))
    return chosen


def primary_key(model, label, value):
    """``value`` as ``model``'s primary key holds it (the command's "1" becomes 1), in range."""
    pk = model._meta.pk
    try:
        value = pk.to_python(value)
        pk.run_validators(value)
    except ValidationError:
        raise InvalidRequest(f"{value!r} is not a primary key of {label}. Nothing was changed.") from None
    return value


@contextmanager
def orm_alias(connection):
    """``connection`` reachable as ``connections[connection.alias]`` for the block, where
    querysets (the collector's) find it; never among ``connections.settings``, where code that
    walks the site's databases would."""
    connections[connection.alias] = connection
    try:
        yield connection.alias
    finally:
        del connections[connection.alias]


def collect_dependants(chosen, scratch):
    """{concrete model: [primary keys]} of the chosen objects in the backup (on ``scratch``)
    and of every object Django's deletion collector would delete with them there. Objects that
    would stop such a deletion (on_delete PROTECT or RESTRICT) are not among them: Django does
    not delete those along."""
    with orm_alias(scratch) as alias:
        collector = NestedObjects(using=alias)
        absent = []
        try:
            for model, pks in chosen.items():
                found = list(model._base_manager.using(alias).filter(pk__in=pks))
                there = {obj.pk for obj in found}
                absent.extend(f"{model._meta.label} {shown(model._meta.pk, pk)}" for pk in pks if pk not in there)
                collector.collect(found)
        except DatabaseError as exc:  # the backup's tables are not the code's
            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise InvalidRequest(
                f"The backup's schema differs from the code's ({reason}). Restore the whole database (it is migrated "
                "afterwards) or restore it as a copy. Nothing was changed."
            ) from None
    if absent:
        raise InvalidRequest(f"Not in the backup: {', '.join(absent)}. Nothing was changed.")
    collected = {}
    for model, instances in collector.data.items():
        concrete = model._meta.concrete_model
        collected.setdefault(concrete, set()).update(instance.pk for instance in instances)
    return {model: sorted(pks) for model, pks in collected.items()}


def insert_missing(collected, scratch, alias, result):
    """In one transaction on ``alias``: sort the backup's rows of ``collected`` into missing,
    unchanged and conflicting; refuse rows whose foreign keys would point nowhere; insert the
    missing ones (unless a dry run) and move the sequences past them. Fills in ``result``."""
    live = connections[alias]
    missing = {}
    try:
        with transaction.atomic(using=alias), live.constraint_checks_disabled(), live.cursor() as cursor:
            with scratch.cursor() as scratch_cursor:
                for model in sorted(collected, key=lambda model: model._meta.db_table):
                    keys = [model._meta.pk.get_db_prep_value(pk, scratch) for pk in collected[model]]
                    backup_rows = rows_by_key(scratch_cursor, scratch, model, keys)
                    live_rows = rows_by_key(cursor, live, model, keys)
                    sort_rows(model, backup_rows, live_rows, missing, result)
            findings = missing_parents(missing, cursor, live)
            if findings:
                raise InvalidRequest(refusal(findings))
            for model, rows in missing.items():
                key = key_index(model)
                result.inserted[model._meta.label] = [shown(model._meta.pk, row[key]) for row in rows]
            if not result.dry_run:
                insert_rows(missing, cursor, live)
    except IntegrityError as exc:  # what the database checks only when it commits
        raise InvalidRequest(
            f"The undelete could not be committed ({database_reason(exc)}). Nothing was changed."
        ) from None
    logger.info("Undelete into %s%s: %s", alias, " (dry run)" if result.dry_run else "", result.summary)


def insert_rows(missing, cursor, live):
    for model, rows in missing.items():
        try:
            cursor.executemany(insert_statement(model, live), rows)
        except IntegrityError as exc:
            raise InvalidRequest(
                f"The {model._meta.label} rows could not be inserted ({database_reason(exc)}): a row there holds "
                "the same unique values. Nothing was changed."
            ) from None
    reset_sequences(live, missing)


def sort_rows(model, backup_rows, live_rows, missing, result):
    """The backup's rows of ``model``: missing live (into ``missing``), there the same, or
    there with other values (a conflict)."""
    label = model._meta.label
    fields = model._meta.local_concrete_fields
    for key, row in backup_rows.items():
        there = live_rows.get(key)
        if there is None:
            missing.setdefault(model, []).append(row)
        elif there == row:
            result.unchanged[label] = result.unchanged.get(label, 0) + 1
        else:
            differing = tuple(field_.name for field_, old, new in zip(fields, row, there, strict=True) if old != new)
            result.conflicts.append(Conflict(label, shown(model._meta.pk, key), differing))


def missing_parents(missing, cursor, live):
    """Foreign keys of the rows to insert that would point at rows neither there nor inserted."""
    tables = set(live.introspection.table_names())
    findings = []
    for model, rows in missing.items():
        columns = columns_of(model)
        for field_ in model._meta.local_concrete_fields:
            if not field_.is_relation or field_.related_model is None:
                continue
            target = field_.related_model._meta.concrete_model
            if target._meta.db_table not in tables:
                continue
            target_column = field_.target_field.column
            position, target_position = columns.index(field_.column), columns_of(target).index(target_column)
            wanted = {row[position] for row in rows} - {None}
            wanted -= {row[target_position] for row in missing.get(target, ())}
            there = {row[0] for row in select_in(cursor, live, target, [target_column], target_column, sorted(wanted))}
            if wanted - there:
                findings.append(Dangling(model, field_.column, target, tuple(sorted(wanted - there))))
    return findings


def refusal(findings):
    """Why the undelete is refused, and which objects to add to it."""
    targets = {}
    for finding in findings:
        targets.setdefault(finding.target._meta.label, set()).update(finding.values)
    add = " ".join(
        f"{label}:{','.join(str(value) for value in sorted(values)[:SHOWN_VALUES])}"
        + (",..." if len(values) > SHOWN_VALUES else "")
        for label, values in sorted(targets.items())
    )
    return (
        f"The rows to undelete need rows that are not in the live database: {'; '.join(map(str, findings))}. "
        f"Undelete those too (add {add} to the objects), which brings back what depends on them as well. "
        "Nothing was changed."
    )


def rows_by_key(cursor, connection, model, keys):
    """{primary key: row} of ``model``'s rows with these primary keys, columns as ``columns_of``."""
    key = key_index(model)
    rows = select_in(cursor, connection, model, columns_of(model), model._meta.pk.column, keys)
    return {row[key]: row for row in rows}


def select_in(cursor, connection, model, columns, column, values):
    """The ``columns`` of ``model``'s rows whose ``column`` is one of ``values`` (sorted ones:
    the rows come in their order)."""
    quote = connection.ops.quote_name
    listed = ", ".join(quote(name) for name in columns)
    rows = []
    for start in range(0, len(values), KEYS_PER_QUERY):
        batch = values[start : start + KEYS_PER_QUERY]
        cursor.execute(
            f"SELECT {listed} FROM {quote(model._meta.db_table)} WHERE {quote(column)} IN "
            f"({', '.join(['%s'] * len(batch))}) ORDER BY {quote(column)}",
            batch,
        )
        rows.extend(tuple(row) for row in cursor.fetchall())
    return rows


def key_index(model):
    return columns_of(model).index(model._meta.pk.column)


def shown(pk_field, value):
    """A primary key as people (and JSON) read it: a number stays one, anything else is text."""
    value = pk_field.to_python(value)
    return value if isinstance(value, int) else str(value)


def database_reason(exc):
    return " / ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
