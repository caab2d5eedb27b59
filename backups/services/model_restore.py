"""Restoring chosen models: their tables' rows (and those of their many-to-many tables) are
replaced by the backup's, in one transaction on the live database; every other table is left
alone. "A staff user deleted 40 recipes this morning; the rest of today's data must stay."

The backup is restored into a scratch database first (the restore drill's), and the rows are
copied across from there in batches, by primary key, so that no table is ever held in memory.
Before the transaction commits, foreign keys are checked both ways: rows elsewhere that would
point at rows that are gone, and restored rows that point at rows missing elsewhere. Any finding
rolls everything back and is listed; or, when asked, the models on the other side join the
restore, until nothing dangles.
"""

import logging
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.apps import apps
from django.core.management.color import no_style
from django.db import DatabaseError, connections, router, transaction
from django.utils import timezone

from ..conf import backup_settings
from ..exceptions import ForeignKeysWouldBreak, InvalidRequest
from ..models import Action
from .backups import get_restorable_backup
from .journal import journal
from .restore import (
    RESTORE_PERMISSIONS,
    check_restore,
    ignore_stage,
    load_dump,
    refuse_inside_transaction,
    restore_preview,
    take_pre_restore_backup,
    verified_copy_anywhere,
)

logger = logging.getLogger("backups")

BATCH_ROWS = 2000
SHOWN_VALUES = 10


@dataclass
class ModelRestoreResult:
    backup: object
    database: str
    models: list  # labels of the models whose rows were replaced, related ones included
    rows: dict  # rows copied per table
    finished_at: object = None
    pre_restore_backup: object = None
    warnings: list = field(default_factory=list)
    operation: object = None


@dataclass(frozen=True)
class Dangling:
    """Rows of ``model``.``column`` that point at ``target`` rows that would not exist."""

    model: object
    column: str
    target: object
    values: tuple

    @property
    def label(self):
        return self.model._meta.label

    @property
    def table(self):
        return self.model._meta.db_table

    @property
    def target_label(self):
        return self.target._meta.label

    @property
    def shown_values(self):
        shown = ", ".join(str(value) for value in self.values[:SHOWN_VALUES])
        return shown + (", ..." if len(self.values) > SHOWN_VALUES else "")

    def __str__(self):
        return (
            f"{self.label}.{self.column} ({self.table}) would point at {self.target_label} rows that would not "
            f"exist: {self.shown_values}"
        )

    def as_dict(self):
        """For the journal and the API: JSON, whatever the type of the key."""
        return {
            "model": self.model._meta.label,
            "table": self.model._meta.db_table,
            "column": self.column,
            "target": self.target._meta.label,
            "values": [value if isinstance(value, (int, str)) else str(value) for value in self.values[:SHOWN_VALUES]],
            "more": len(self.values) > SHOWN_VALUES,
        }


@dataclass(frozen=True)
class RestorableModel:
    """A model whose rows can be restored, as a page or a prompt offers it."""

    label: str  # "app.Model", as restore_models takes it
    app_label: str
    app_name: str
    name: str  # its verbose plural name
    tables: tuple  # its table, then those of its many-to-many fields, whose rows come along


@dataclass
class ModelRestorePreview:
    """What a restore of chosen models would restore from and into, before it starts."""

    backup: object
    database: dict  # describe_database() of the database whose tables it replaces
    warning: str | None  # about the backup's verification
    pre_restore_backup: bool  # whether the current state is backed up first


@dataclass
class ChosenModels:
    """What the labels a person chose stand for."""

    models: list  # labels of the models ("recipes" becomes each of its models)
    tables: list  # the tables whose rows would be replaced, many-to-many ones included


class DanglingReferences(Exception):
    def __init__(self, findings):
        super().__init__("dangling references")
        self.findings = findings


def restore_models(
    filename,
    *,
    actor,
    models,
    include_related=False,
    target=None,
    pre_restore_backup=None,
    operation=None,
    progress=None,
    stage=None,
):
    """Replace the rows of ``models`` (labels: "app.Model", or "app" for all its models) and of
    their many-to-many tables in the backup's database (or ``target``) with the backup's.
    ``operation``, ``progress`` and ``stage`` as for ``restore_backup``; after the phases it
    shares with it comes "copying rows"."""
    stage = stage or ignore_stage
    refuse_inside_transaction()
    with journal(
        Action.RESTORE_MODELS,
        actor,
        filename=filename,
        database=target or "",
        permission=RESTORE_PERMISSIONS[Action.RESTORE_MODELS],
        operation=operation,
    ) as record:
        backup = get_restorable_backup(filename)
        chosen = resolve_models(models)
        alias = record.database = target or backup.database
        engine, manifest = check_restore(backup, alias)
        result = ModelRestoreResult(backup=backup, database=alias, models=[], rows={}, operation=record)
        with engine.lock(exclusive=True):
            stage("checking")
            with backup_in_scratch(engine, filename, manifest, result.warnings, progress, stage) as scratch_connection:
                refuse_missing_columns(chosen, scratch_connection)
                if takes_pre_restore_backup(pre_restore_backup):
                    result.pre_restore_backup = take_pre_restore_backup(
                        engine, actor, f"Before restoring {len(chosen)} models' tables from {filename}", stage
                    )
                    record.details = {**record.details, "pre_restore_backup": result.pre_restore_backup.filename}
                stage("copying rows")
                try:
                    result.rows = replace_until_consistent(chosen, scratch_connection, alias, include_related)
                except ForeignKeysWouldBreak as refusal:
                    # For a page that offers to restore again with them (the admin's result page).
                    record.details = {**record.details, "related": refusal.related}
                    raise
        result.models = labels_of(chosen)
        result.finished_at = timezone.now()
        record.message = f"Restored the rows of {', '.join(result.models)} from {filename}"
        record.details = {**record.details, "models": result.models, "rows": result.rows, "warnings": result.warnings}
    return result


def takes_pre_restore_backup(requested):
    """Whether the current state is backed up first: as asked, else BACKUP_PRE_RESTORE_BACKUP.
    (Unlike a whole restore, this one always rolls back in full: it is one transaction.)"""
    return backup_settings.PRE_RESTORE_BACKUP if requested is None else requested


def model_restore_preview(filename, *, actor, target=None):
    """What a restore of chosen models from ``filename`` (into ``target``) would restore from and
    into, and whether it backs up the current state first."""
    preview = restore_preview(filename, actor=actor, target=target, kind=Action.RESTORE_MODELS)
    return ModelRestorePreview(
        backup=preview.backup,
        database=preview.database,
        warning=preview.warning,
        pre_restore_backup=takes_pre_restore_backup(None),
    )


def chosen_models(labels):
    """The models and tables that ``labels`` stand for, refused as ``restore_models`` refuses them."""
    chosen = resolve_models(labels)
    return ChosenModels(models=labels_of(chosen), tables=sorted(model._meta.db_table for model in chosen))


def restorable_models(alias):
    """The models whose rows can be restored this way into ``alias``, by app and name."""
    found = [
        RestorableModel(
            label=model._meta.label,
            app_label=model._meta.app_label,
            app_name=str(model._meta.app_config.verbose_name),
            name=str(model._meta.verbose_name_plural),
            tables=(model._meta.db_table, *(through._meta.db_table for through in many_to_many_tables(model))),
        )
        for model in apps.get_models()
        if not model._meta.proxy and refusal(model) is None and router.allow_migrate_model(alias, model)
    ]
    return sorted(found, key=lambda model: (model.app_name, model.name))


def refusal(model):
    """Why the rows of ``model`` cannot be restored this way, or None."""
    if model._meta.app_label == "backups":
        return (
            "The backups app's own tables are not restored this way: the catalog is rebuilt from storage "
            "('manage.py backups sync'). Nothing was changed."
        )
    if not model._meta.managed:
        return f"{model._meta.label} is not managed by Django. Nothing was changed."
    return None


def resolve_models(labels):
    """The concrete models named by ``labels``, with their auto-created many-to-many tables."""
    if not labels or isinstance(labels, str):
        raise InvalidRequest('Name the models to restore, e.g. "recipes.Recipe" (or "recipes" for a whole app).')
    return with_many_to_many({model for label in labels for model in models_named(label)})


def models_named(label):
    """The concrete models ``label`` names ("app.Model", or "app" for all its models), refused
    when they are not restored from backups this way."""
    try:
        found = [apps.get_model(label)] if "." in label else list(apps.get_app_config(label).get_models())
    except (LookupError, ValueError):
        raise InvalidRequest(f"There is no model or app {label!r}. Nothing was changed.") from None
    for model in found:
        if reason := refusal(model):
            raise InvalidRequest(reason)
    return {model._meta.concrete_model for model in found}


def labels_of(models):
    """The labels of ``models`` as people chose them: without the auto-created many-to-many ones."""
    return sorted(model._meta.label for model in models if not model._meta.auto_created)


def with_many_to_many(models):
    return set(models).union(*(many_to_many_tables(model) for model in models))


def many_to_many_tables(model):
    """The auto-created models of ``model``'s many-to-many tables, whose rows come with its own."""
    throughs = (field_.remote_field.through for field_ in model._meta.local_many_to_many)
    return [through for through in throughs if through._meta.auto_created]


@contextmanager
def backup_in_scratch(engine, filename, manifest, warnings, progress=None, stage=ignore_stage):
    """The backup loaded into a scratch database (the restore drills'), as a Django connection
    of its own, for as long as the block runs; then the scratch database is dropped."""
    with verified_copy_anywhere(filename, manifest, warnings) as source, engine.scratch() as scratch:
        stage("loading")
        load_dump(scratch, source, filename, manifest.get("uncompressed_bytes"), progress=progress)
        with connection_to(scratch) as connection:
            yield connection


@contextmanager
def connection_to(engine):
    """A Django connection to the database of ``engine`` (the scratch one), of its own: not
    registered among the site's aliases, where nothing else should find it."""
    live = connections[engine.alias]
    connection = type(live)(dict(engine.settings_dict), alias=f"backups_scratch_{secrets.token_hex(4)}")
    try:
        yield connection
    finally:
        connection.close()


def refuse_missing_columns(models, connection):
    """The backup's tables must have every column the code's models have: a model changed by a
    migration since the backup cannot take its old rows (restore the whole database instead)."""
    problems = []
    for model in sorted(models, key=lambda model: model._meta.db_table):
        table = model._meta.db_table
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)} WHERE 1 = 0")
                present = {column[0] for column in cursor.description}
        except DatabaseError:
            problems.append(f"{table} is not in the backup")
            continue
        missing = [field_.column for field_ in model._meta.local_concrete_fields if field_.column not in present]
        if missing:
            problems.append(f"{table} has no column {', '.join(missing)} in the backup")
    if problems:
        raise InvalidRequest(
            f"The backup's schema differs from the code's: {'; '.join(problems)}. Restore the whole database "
            "(it is migrated afterwards) or restore it as a copy. Nothing was changed."
        )


def replace_until_consistent(chosen, scratch, alias, include_related):
    """Replace the rows; on dangling references refuse, or add the models on their other side
    (``include_related``) and try again. Returns rows copied per table."""
    while True:
        try:
            return replace_rows(chosen, scratch, alias)
        except DanglingReferences as dangling:
            related = {finding.model for finding in dangling.findings} | {
                finding.target for finding in dangling.findings
            }
            related = with_many_to_many({model._meta.concrete_model for model in related}) - chosen
            if not include_related or not related:
                listed = "; ".join(str(finding) for finding in dangling.findings)
                raise ForeignKeysWouldBreak(
                    f"Restoring only these models would break foreign keys: {listed}. Include the related models "
                    '(--include-related, API: "include_related": true) or choose them too. Nothing was changed.',
                    findings=dangling.findings,
                    related=labels_of(related),
                ) from None
            logger.info("Model restore: adding related models %s", sorted(model._meta.label for model in related))
            chosen |= related


def replace_rows(chosen, scratch, alias):
    """In one transaction on ``alias``: empty the chosen tables, copy the backup's rows in, check
    the foreign keys (``DanglingReferences`` rolls it all back), reset the sequences."""
    live = connections[alias]
    rows = {}
    with transaction.atomic(using=alias):
        with live.constraint_checks_disabled(), live.cursor() as cursor:
            for model in chosen:
                cursor.execute(f"DELETE FROM {live.ops.quote_name(model._meta.db_table)}")
            for model in sorted(chosen, key=lambda model: model._meta.db_table):
                rows[model._meta.db_table] = copy_rows(model, scratch, cursor, live)
        findings = dangling_references(chosen, alias)
        if findings:
            raise DanglingReferences(findings)
        reset_sequences(live, chosen)
    return rows


def reset_sequences(connection, models):
    """Rows inserted with their primary keys do not move the sequences that number new rows
    (PostgreSQL's): set each to the table's highest key, as loaddata does."""
    with connection.cursor() as cursor:
        for statement in connection.ops.sequence_reset_sql(no_style(), list(models)):
            cursor.execute(statement)


def copy_rows(model, scratch, live_cursor, live):
    """The table's rows from the scratch database into the live one, a batch at a time, in the
    order of the primary key (keyset paging: the same cost for every batch)."""
    quote = live.ops.quote_name
    columns = columns_of(model)
    key = columns.index(model._meta.pk.column)
    listed = ", ".join(quote(column) for column in columns)
    table, pk = quote(model._meta.db_table), quote(model._meta.pk.column)
    insert = insert_statement(model, live)
    copied, last = 0, None
    with scratch.cursor() as cursor:
        while True:
            after = "" if last is None else f" WHERE {pk} > %s"
            cursor.execute(
                f"SELECT {listed} FROM {table}{after} ORDER BY {pk} LIMIT {BATCH_ROWS}", [] if last is None else [last]
            )
            batch = cursor.fetchall()
            if not batch:
                return copied
            live_cursor.executemany(insert, batch)
            copied += len(batch)
            last = batch[-1][key]


def columns_of(model):
    """The columns of ``model``'s table that the code knows, in the order rows are read and written."""
    return [field_.column for field_ in model._meta.local_concrete_fields]


def insert_statement(model, connection):
    """INSERT of one row of ``model``'s table, its values in the order of ``columns_of``."""
    quote = connection.ops.quote_name
    columns = columns_of(model)
    listed = ", ".join(quote(column) for column in columns)
    return f"INSERT INTO {quote(model._meta.db_table)} ({listed}) VALUES ({', '.join(['%s'] * len(columns))})"


def dangling_references(chosen, alias):
    """Foreign keys that would point nowhere: from other tables into the chosen ones, and from
    the chosen ones into other tables. Between chosen tables the backup is consistent by itself."""
    live = connections[alias]
    tables = set(live.introspection.table_names())
    findings = []
    with live.cursor() as cursor:
        for model in apps.get_models(include_auto_created=True):
            if model._meta.proxy or not model._meta.managed or model._meta.db_table not in tables:
                continue
            if not router.allow_migrate_model(alias, model):
                continue
            for field_ in model._meta.local_concrete_fields:
                if not field_.is_relation or field_.related_model is None:
                    continue
                target = field_.related_model._meta.concrete_model
                if (model in chosen) == (target in chosen) or target._meta.db_table not in tables:
                    continue
                values = missing_targets(cursor, live, model, field_, target)
                if values:
                    findings.append(Dangling(model, field_.column, target, tuple(values)))
    return findings


def missing_targets(cursor, live, model, field_, target):
    """Values of ``model``.``field_`` that no row of ``target`` has (up to one more than shown)."""
    quote = live.ops.quote_name
    column, target_column = quote(field_.column), quote(field_.target_field.column)
    cursor.execute(
        f"SELECT DISTINCT c.{column} FROM {quote(model._meta.db_table)} c "
        f"LEFT JOIN {quote(target._meta.db_table)} r ON c.{column} = r.{target_column} "
        f"WHERE c.{column} IS NOT NULL AND r.{target_column} IS NULL ORDER BY c.{column} LIMIT {SHOWN_VALUES + 1}"
    )
    return [row[0] for row in cursor.fetchall()]
