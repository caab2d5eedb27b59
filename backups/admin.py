"""The Django admin for backups: thin. Every button, link and action calls the service, which
checks the permission again, and reports the outcome as an admin message or a result page."""

import json
from dataclasses import dataclass
from functools import partial
from pathlib import PurePath

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator, capfirst
from django.views.decorators.cache import never_cache

from . import services
from .downloads import download_response
from .exceptions import BackupError
from .formatting import human_age, human_duration, human_size, local_time
from .models import (
    RESTORE_ACTIONS,
    Action,
    Backup,
    BackupStatus,
    DatabaseCopy,
    Operation,
    OperationStatus,
    Origin,
    RestoreHistory,
)
from .services.database_copies import COPY_NAME_RULE

# Progress pages poll with a signed ticket instead of the session: while a restore loads the
# database that holds the sessions, every query on them waits for it.
PROGRESS_SALT = "backups.admin.progress"
PROGRESS_TICKET_AGE = 24 * 3600
PHASES = {
    "waiting": "Waiting for the worker to start",
    "checking": "Checking the backup file against its checksum",
    "pre-restore backup": "Backing up the current state (the undo)",
    "loading": "Loading the backup into the database",
    "catalog": "Rebuilding the backup catalog",
    "copying rows": "Copying the chosen tables' rows from the backup",
    "dumping": "Writing the backup",
    "finished": "Finished",
}
NOT_RESTORABLE = (BackupStatus.FAILED, BackupStatus.MISSING)


@dataclass(frozen=True)
class RestoreKind:
    """How the progress and result pages speak of one kind of restore job."""

    name: str  # what the templates tell the kinds apart by
    crumb: str
    running: str
    succeeded: str
    failed: str


RESTORE_KINDS = {
    Action.RESTORE: RestoreKind(
        "whole", "Restore", "Restoring the database", "Database restored", "The restore failed"
    ),
    Action.RESTORE_COPY: RestoreKind(
        "copy", "Restore as a copy", "Restoring a backup as a copy", "Backup restored as a copy", "The copy failed"
    ),
    Action.RESTORE_MODELS: RestoreKind(
        "models", "Restore chosen models", "Restoring chosen models", "Models restored", "The model restore failed"
    ),
}

# Set on the request when an operation was refused or failed; see BackupAdmin.report_failure.
FAILED_ON_REQUEST = "_backups_failed"


def actor_for(request):
    return services.Actor.for_request(request, Origin.ADMIN)


class RestoreConfirmationForm(forms.Form):
    """The database's name, typed by hand: the last guard before everything is overwritten."""

    confirm_database = forms.CharField(label="Database name", max_length=1000)

    def __init__(self, *args, database_name, **kwargs):
        super().__init__(*args, **kwargs)
        self.database_name = database_name
        self.fields["confirm_database"].widget.attrs.update(
            {"autocomplete": "off", "spellcheck": "false", "size": 40, "data-expected": database_name}
        )

    def clean_confirm_database(self):
        typed = self.cleaned_data["confirm_database"]
        if typed != self.database_name:
            raise forms.ValidationError("That is not the name of the database. Nothing was restored.")
        return typed


class CopyForm(forms.Form):
    """The new database's name; the service says which names it takes."""

    into = forms.CharField(label="Name of the new database", help_text=COPY_NAME_RULE)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["into"].widget.attrs.update(
            {"autocomplete": "off", "spellcheck": "false", "size": 40, "aria-describedby": "copy-name-help"}
        )


class ModelRestoreForm(forms.Form):
    """The apps and models whose rows are restored; ``post`` is set once they are confirmed."""

    models = forms.MultipleChoiceField(error_messages={"required": "Choose at least one model. Nothing was changed."})
    include_related = forms.BooleanField(required=False, label="Include related models")
    post = forms.BooleanField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, groups, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["models"].choices = [
            (value, value) for group in groups for value in (group.label, *(model.label for model in group.models))
        ]


class UndeleteForm(forms.Form):
    """A model and the primary keys of its objects to bring back; ``post`` is set once the dry
    run's list of what would come back is confirmed."""

    model = forms.ChoiceField(label="Model", error_messages={"required": "Choose a model. Nothing was changed."})
    pks = forms.CharField(
        label="Primary keys",
        max_length=10000,
        help_text="Separated by commas, e.g. 12, 13, 14.",
        error_messages={"required": "Name at least one primary key. Nothing was changed."},
    )
    post = forms.BooleanField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, models, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [
            ("", "Choose a model"),
            *(
                (group.name, [(model.label, f"{capfirst(model.name)} ({model.label})") for model in group.models])
                for group in model_groups(models)
            ),
        ]
        self.fields["pks"].widget.attrs.update(
            {"autocomplete": "off", "spellcheck": "false", "size": 40, "aria-describedby": "undelete-pks-help"}
        )

    def clean_pks(self):
        pks = [key.strip() for key in self.cleaned_data["pks"].split(",") if key.strip()]
        if not pks:
            raise forms.ValidationError("Name at least one primary key. Nothing was changed.")
        return pks

    @property
    def objects(self):
        """What the undelete service takes: {"app.Model": [primary keys]}."""
        return {self.cleaned_data["model"]: self.cleaned_data["pks"]}


@dataclass
class ModelGroup:
    """An app as the model restore page lists it: its label, name and restorable models."""

    label: str
    name: str
    models: list


def model_groups(models):
    """``restorable_models`` by app, as the page lists them."""
    groups = {}
    for model in models:
        groups.setdefault(model.app_label, ModelGroup(model.app_label, model.app_name, [])).models.append(model)
    return list(groups.values())


def confirmation_name(database):
    """What the person confirming a restore types: the database's name, or for SQLite the
    file's name, not its whole path."""
    if database["engine"] == "sqlite":
        return PurePath(database["name"]).name
    return database["name"]


class OutcomeFilter(admin.SimpleListFilter):
    """Failed and missing attempts are kept for the record but are not backups one can use:
    hidden unless asked for."""

    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request, model_admin):
        hidden = model_admin.get_queryset(request).filter(status__in=NOT_RESTORABLE).count()
        return (("failed", f"Failed and missing ({hidden})"), ("all", "All attempts"))

    def choices(self, changelist):
        first, *rest = super().choices(changelist)
        yield {**first, "display": "Restorable and in progress"}
        yield from rest

    def queryset(self, request, queryset):
        if self.value() == "failed":
            return queryset.filter(status__in=NOT_RESTORABLE)
        if self.value() == "all":
            return queryset
        return queryset.exclude(status__in=NOT_RESTORABLE)


def badge(kind, text, title=""):
    return format_html('<span class="backup-badge backup-badge-{}" title="{}">{}</span>', kind, title, text)


def age(moment):
    """ "2 h ago", with the exact local time on hover."""
    if moment is None:
        return "-"
    return format_html(
        '<time datetime="{}" title="{}">{}</time>', moment.isoformat(), local_time(moment), human_age(moment)
    )


STATUS_BADGES = {
    BackupStatus.SUCCEEDED: "good",
    BackupStatus.RUNNING: "busy",
    BackupStatus.PENDING: "busy",
    BackupStatus.FAILED: "bad",
    BackupStatus.MISSING: "bad",
}


def verification_badge(backup):
    verification = backup.verification
    if not verification:
        return badge("quiet", "not verified")
    what = "drill" if verification.get("level") == "restore" else "checksum"
    title = f"{verification.get('message', '')} ({local_time(backup.verified_at)})"
    if verification.get("passed"):
        return badge("good", f"{what} passed", title)
    return badge("bad", f"{what} failed", title)


def progress_ticket(kind, key):
    return signing.dumps({"kind": kind, "key": str(key)}, salt=PROGRESS_SALT)


def progress_facts(progress):
    """A job's progress as the page and its poller show it."""
    return {
        "finished": progress.finished,
        "phase": progress.phase,
        "phase_label": PHASES.get(progress.phase, progress.phase),
        "percent": None if progress.fraction is None else round(progress.fraction * 100),
        "done": human_size(progress.done) if progress.done else "",
        "total": ("about " if progress.estimated else "") + human_size(progress.total) if progress.total else "",
        "rate": f"{human_size(progress.rate)}/s" if progress.rate else "",
        "elapsed": human_duration(progress.elapsed),
        "left": human_duration(progress.seconds_left) if progress.seconds_left is not None else "",
    }


@admin.register(Backup)
class BackupAdmin(admin.ModelAdmin):
    list_display = ("backup", "age", "size", "status_badge", "verified", "trigger", "database")
    list_display_links = ("backup",)
    list_filter = (OutcomeFilter, "trigger", "database")
    date_hierarchy = "created_at"
    search_fields = ("filename", "description")
    ordering = ("-created_at", "-filename")
    actions = [
        "restore_selected",
        "restore_copy_selected",
        "restore_models_selected",
        "verify_checksums",
        "drill_restores",
    ]
    formfield_overrides = {models.TextField: {"widget": forms.Textarea(attrs={"rows": 3, "cols": 60})}}
    fieldsets = (
        (None, {"fields": ("filename", "description", "status", "error")}),
        ("Database", {"fields": ("database", "engine", "database_name", "database_host")}),
        ("File", {"fields": ("created", "finished", "duration", "size", "uncompressed_size", "checksum")}),
        ("Copies", {"fields": ("copies",)}),
        ("Origin", {"fields": ("trigger", "origin", "created_by")}),
        ("Verification", {"fields": ("verified", "verification_message", "verification_history")}),
        ("Schema", {"fields": ("applied_migrations", "django_version", "app_version")}),
        ("Manifest", {"classes": ("collapse",), "fields": ("manifest_json",)}),
    )
    readonly_fields = (
        "filename",
        "status",
        "error",
        "database",
        "engine",
        "database_name",
        "database_host",
        "created",
        "finished",
        "duration",
        "size",
        "uncompressed_size",
        "checksum",
        "copies",
        "trigger",
        "origin",
        "created_by",
        "verified",
        "verification_message",
        "verification_history",
        "applied_migrations",
        "django_version",
        "app_version",
        "manifest_json",
    )

    class Media:
        css = {"all": ["backups/admin.css"]}

    # -- columns and fields -----------------------------------------------------------------

    @admin.display(description="backup", ordering="filename")
    def backup(self, backup):
        description = Truncator(backup.description.replace("\n", " ")).chars(70)
        # Long names break after an underscore rather than anywhere.
        filename = format_html_join(mark_safe("_<wbr>"), "{}", ((part,) for part in backup.filename.split("_")))
        return format_html(
            '<span class="backup-filename">{}</span><span class="backup-description">{}</span>', filename, description
        )

    @admin.display(description="created", ordering="created_at")
    def age(self, backup):
        return age(backup.created_at)

    @admin.display(description="created", ordering="created_at")
    def created(self, backup):
        return local_time(backup.created_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, backup):
        return local_time(backup.finished_at)

    @admin.display(description="duration")
    def duration(self, backup):
        return human_duration(backup.duration_seconds)

    @admin.display(description="size", ordering="size_bytes")
    def size(self, backup):
        return human_size(backup.size_bytes)

    @admin.display(description="uncompressed", ordering="uncompressed_bytes")
    def uncompressed_size(self, backup):
        return human_size(backup.uncompressed_bytes)

    @admin.display(description="SHA-256")
    def checksum(self, backup):
        return format_html('<code class="backup-checksum">{}</code>', backup.sha256) if backup.sha256 else "-"

    @admin.display(description="status", ordering="status")
    def status_badge(self, backup):
        label = badge(STATUS_BADGES[backup.status], backup.get_status_display(), backup.error)
        if backup.status in NOT_RESTORABLE:
            reason = backup.error or "The file is missing from the backup storage."
            return format_html('{}<span class="backup-reason">{}</span>', label, Truncator(reason).chars(90))
        return label

    @admin.display(description="verified", ordering="verified_at")
    def verified(self, backup):
        return verification_badge(backup)

    @admin.display(description="verification result")
    def verification_message(self, backup):
        return (backup.verification or {}).get("message", "-")

    @admin.display(description="verification history")
    def verification_history(self, backup):
        checks = services.verification_history(backup.filename)
        rows = [(local_time(check.started_at), check.status, check.actor, check.message) for check in checks]
        if not rows:
            return "Never verified."
        return format_html(
            '<table class="backup-history"><thead><tr><th scope="col">When</th><th scope="col">Outcome</th>'
            '<th scope="col">By</th><th scope="col">Result</th></tr></thead><tbody>{}</tbody></table>',
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="where")
    def copies(self, backup):
        locations = services.copy_locations(backup)
        if not locations:
            return "No verified copy."
        lines = [(name, where or "a storage no longer configured") for name, where in locations]
        text = format_html_join(mark_safe("<br>"), "{} copy in {}", lines)
        if backup.offsite_error:
            text = format_html(
                '{}<br><span class="backup-reason">Off-site copy failed: {}</span>', text, backup.offsite_error
            )
        return text

    @admin.display(description="applied migrations")
    def applied_migrations(self, backup):
        if backup.migrations is None:
            return "-"
        return format_html(
            "<pre>{}</pre>", "\n".join(f"{app}: {', '.join(names)}" for app, names in backup.migrations.items())
        )

    @admin.display(description="manifest")
    def manifest_json(self, backup):
        return format_html("<pre>{}</pre>", json.dumps(backup.manifest, indent=2, sort_keys=True))

    def get_list_display(self, request):
        """A Restore button on each restorable row, for the users who may press it."""
        if not self.has_restore_permission(request):
            return self.list_display

        @admin.display(description="")
        def restore_button(backup):
            if backup.status != BackupStatus.SUCCEEDED:
                return ""
            return format_html(
                '<a class="button backup-restore-button" href="{}" aria-label="Restore {}">Restore…</a>',
                reverse("admin:backups_backup_restore", args=[quote(backup.pk)]),
                backup.filename,
            )

        return (*self.list_display, restore_button)

    # -- permissions ------------------------------------------------------------------------

    def has_add_permission(self, request):
        # Backups are made by the service (the "Create backup" button), never typed into a form.
        return False

    def has_create_permission(self, request):
        return request.user.has_perm("backups.add_backup")

    def has_restore_permission(self, request, obj=None):
        return request.user.has_perm("backups.restore_backup")

    def has_restore_copy_permission(self, request, obj=None):
        return request.user.has_perm("backups.restore_copy")

    def has_restore_models_permission(self, request, obj=None):
        return request.user.has_perm("backups.restore_models")

    def has_download_permission(self, request, obj=None):
        return request.user.has_perm("backups.download_backup")

    def has_verify_permission(self, request, obj=None):
        return request.user.has_perm("backups.verify_backup")

    # -- pages --------------------------------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("overview/", view(self.overview_view), name="backups_backup_overview"),
            path("create/", view(self.create_view), name="backups_backup_create"),
            path("sync/", view(self.sync_view), name="backups_backup_sync"),
            path("restores/<str:job_id>/", view(self.restore_job_view), name="backups_backup_restore_job"),
            # Not behind admin_view: the ticket is the authorisation (see PROGRESS_SALT).
            path("progress/<str:ticket>/", never_cache(self.progress_view), name="backups_backup_progress"),
            path("<path:object_id>/restore/", view(self.restore_view), name="backups_backup_restore"),
            path("<path:object_id>/restore-copy/", view(self.restore_copy_view), name="backups_backup_restore_copy"),
            path(
                "<path:object_id>/restore-models/", view(self.restore_models_view), name="backups_backup_restore_models"
            ),
            path("<path:object_id>/undelete/", view(self.undelete_view), name="backups_backup_undelete"),
            path("<path:object_id>/download/", view(self.download_view), name="backups_backup_download"),
            path("<path:object_id>/job/", view(self.backup_job_view), name="backups_backup_job"),
            *super().get_urls(),
        ]

    def page_context(self, request, **context):
        return {**self.admin_site.each_context(request), "opts": self.opts, **context}

    def overview_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        overview = services.overview(actor=actor_for(request))
        context = self.page_context(request, title="Backups overview", overview=overview, now=timezone.now())
        return TemplateResponse(request, "admin/backups/backup/overview.html", context)

    def changelist_view(self, request, extra_context=None):
        context = {
            "title": "Backups",
            # The list needs the width of a 1280 px screen; the breadcrumbs lead elsewhere.
            "is_nav_sidebar_enabled": False,
            "can_create": self.has_create_permission(request),
            "description_max_length": Backup._meta.get_field("description").max_length,
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {
            "title": "Backup",
            "can_restore": self.has_restore_permission(request),
            "can_restore_copy": self.has_restore_copy_permission(request),
            "can_restore_models": self.has_restore_models_permission(request),
            "can_download": self.has_download_permission(request),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)

    def create_view(self, request):
        """Starts the backup in a worker and shows its progress."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_create_permission(request):
            raise PermissionDenied
        try:
            backup = services.start_backup(actor=actor_for(request), description=request.POST.get("description", ""))
        except BackupError as error:
            self.report_failure(request, f"The backup was not created: {error.message}")
            return self.changelist_redirect()
        return HttpResponseRedirect(reverse("admin:backups_backup_job", args=[quote(backup.pk)]))

    def backup_job_view(self, request, object_id):
        """A backup being written: its progress; once it has ended, the list and how it went."""
        backup = self.get_object(request, unquote(object_id))
        if backup is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        backup = services.get_backup(backup.filename, actor=actor_for(request))  # a dead worker's row fails
        progress = services.backup_progress(backup)
        if not progress.finished:
            context = self.page_context(
                request,
                title="Creating a backup",
                backup=backup,
                progress=progress_facts(progress),
                poll_url=reverse("admin:backups_backup_progress", args=[progress_ticket("backup", backup.pk)]),
            )
            return TemplateResponse(request, "admin/backups/backup/job_progress.html", context)
        if backup.status == BackupStatus.SUCCEEDED:
            text = f"Backup {backup.filename} created ({human_size(backup.size_bytes)})."
            self.message_user(request, text, messages.SUCCESS)
            if backup.offsite_error:
                self.message_user(request, backup.offsite_error, messages.WARNING)
        else:
            self.report_failure(request, f"The backup was not created: {backup.error}")
        return self.changelist_redirect()

    def progress_view(self, request, ticket):
        """What the progress pages poll, about once a second. Touches neither the session nor,
        while a restore loads, the database."""
        try:
            job = signing.loads(ticket, salt=PROGRESS_SALT, max_age=PROGRESS_TICKET_AGE)
        except signing.BadSignature:
            raise Http404("No such job.") from None
        if job["kind"] == "restore":
            progress = services.restore_progress(job["key"])
        else:
            backup = Backup.objects.filter(pk=job["key"]).first()
            if backup is None:
                raise Http404("No such job.")
            progress = services.backup_progress(backup)
        return JsonResponse(progress_facts(progress))

    def sync_view(self, request):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_create_permission(request):
            raise PermissionDenied
        try:
            result = services.sync_catalog(actor=actor_for(request))
        except BackupError as error:
            self.report_failure(request, f"The catalog was not synchronised: {error.message}")
        else:
            self.message_user(request, f"Catalog synchronised with the storage: {result.summary}.", messages.SUCCESS)
        return self.changelist_redirect()

    def download_view(self, request, object_id):
        if not self.has_download_permission(request):
            raise PermissionDenied
        backup = self.get_object(request, unquote(object_id))
        if backup is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        try:
            backup, stream = services.open_backup(backup.filename, actor=actor_for(request))
        except BackupError as error:
            self.report_failure(request, f"{backup.filename} cannot be downloaded: {error.message}")
            return self.changelist_redirect()
        return download_response(backup, stream)

    def restore_page(self, request, object_id, permitted, preview):
        """The start of every restore page: the permission (``permitted(request)``), the backup,
        and the service's ``preview(filename, actor=)`` of it. Returns (backup, actor, preview),
        or the response that ends the page early."""
        if not permitted(request):
            raise PermissionDenied
        backup = self.get_object(request, unquote(object_id))
        if backup is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        actor = actor_for(request)
        try:
            return backup, actor, preview(backup.filename, actor=actor)
        except BackupError as error:
            self.report_failure(request, self.cannot_restore(backup, error))
            return self.changelist_redirect()

    def restore_view(self, request, object_id):
        """GET: what will be overwritten and by what. POST, with the database's name typed in:
        the restore starts in a worker (no web request limits its size or time), and the page
        that follows it."""
        started = self.restore_page(request, object_id, self.has_restore_permission, services.restore_preview)
        if isinstance(started, HttpResponseBase):
            return started
        backup, actor, preview = started
        expected = confirmation_name(preview.database)
        form = RestoreConfirmationForm(request.POST or None, database_name=expected)
        if request.method == "POST" and form.is_valid():
            try:
                job = services.start_restore(backup.filename, actor=actor)
            except BackupError as error:
                self.report_failure(request, self.cannot_restore(backup, error))
                return self.changelist_redirect()
            return self.job_redirect(job)
        context = self.page_context(
            request,
            title="Restore the database from a backup",
            backup=backup,
            database=preview.database,
            confirmation_name=expected,
            backup_created=local_time(backup.created_at),
            backup_size=human_size(backup.size_bytes),
            backup_uncompressed_size=human_size(backup.uncompressed_bytes),
            form=form,
            database_size=human_size(preview.database["size_bytes"]),
            preview=preview,
            never_verified=backup.verification is None,
            can_verify=self.has_verify_permission(request),
        )
        return TemplateResponse(request, "admin/backups/backup/restore_confirmation.html", context)

    def restore_copy_view(self, request, object_id):
        """GET: what is copied, and where the new database goes. POST, with its name: the backup
        is restored into that new database, never the live one, by a worker; then the page that
        follows it. A name the service refuses at once is said here, on the form."""
        started = self.restore_page(
            request,
            object_id,
            self.has_restore_copy_permission,
            partial(services.restore_preview, kind=Action.RESTORE_COPY),
        )
        if isinstance(started, HttpResponseBase):
            return started
        backup, actor, preview = started
        form = CopyForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                job = services.start_restore(backup.filename, actor=actor, into=form.cleaned_data["into"])
            except BackupError as error:
                self.report_failure(request, f"{backup.filename} was not restored as a copy: {error.message}")
            else:
                return self.job_redirect(job)
        context = self.page_context(
            request,
            title="Restore a backup as a copy",
            backup=backup,
            backup_created=local_time(backup.created_at),
            database=preview.database,
            preview=preview,
            form=form,
        )
        return TemplateResponse(request, "admin/backups/backup/restore_copy.html", context)

    def restore_models_view(self, request, object_id):
        """Chosen models' rows from the backup, in steps (each a POST but the first, as Django's
        delete_selected): choose the apps and models; see what will be replaced; confirm, and a
        worker restores them while the job's page follows it (which, should foreign keys refuse
        the restore, lists them and offers it again with the related models)."""
        started = self.restore_page(
            request, object_id, self.has_restore_models_permission, services.model_restore_preview
        )
        if isinstance(started, HttpResponseBase):
            return started
        backup, actor, preview = started
        groups = model_groups(services.restorable_models(preview.database["alias"]))
        form = ModelRestoreForm(request.POST or None, groups=groups)
        context = self.page_context(
            request,
            title="Restore chosen models from a backup",
            backup=backup,
            backup_created=local_time(backup.created_at),
            preview=preview,
            groups=groups,
            form=form,
            ticked=set(form["models"].value() or []),
            step="choose",
        )
        page = "admin/backups/backup/restore_models.html"
        if not (form.is_bound and form.is_valid()):
            return TemplateResponse(request, page, context)
        labels = form.cleaned_data["models"]
        try:
            context.update(chosen=services.chosen_models(labels), step="confirm")
        except BackupError as error:
            self.report_failure(request, error.message)
            return TemplateResponse(request, page, context)
        if not form.cleaned_data["post"]:
            return TemplateResponse(request, page, context)
        try:
            job = services.start_restore(
                backup.filename, actor=actor, models=labels, include_related=form.cleaned_data["include_related"]
            )
        except BackupError as error:
            self.report_failure(request, f"The models were not restored from {backup.filename}: {error.message}")
            context["step"] = "choose"
            return TemplateResponse(request, page, context)
        return self.job_redirect(job)

    def undelete_view(self, request, object_id):
        """Deleted objects and those that depended on them, back from the backup, in steps (each
        a POST): choose a model and primary keys; see what a dry run finds would be inserted, is
        there already, or conflicts; confirm, and the missing rows are inserted. The request
        waits for both: an undelete inserts few rows (though it loads the backup first)."""
        started = self.restore_page(
            request, object_id, self.has_restore_models_permission, services.model_restore_preview
        )
        if isinstance(started, HttpResponseBase):
            return started
        backup, actor, preview = started
        form = UndeleteForm(request.POST or None, models=services.restorable_models(preview.database["alias"]))
        context = self.page_context(
            request,
            title="Undelete objects from a backup",
            backup=backup,
            backup_created=local_time(backup.created_at),
            preview=preview,
            form=form,
            step="choose",
        )
        page = "admin/backups/backup/undelete.html"
        if not (form.is_bound and form.is_valid()):
            return TemplateResponse(request, page, context)
        confirmed = form.cleaned_data["post"]
        try:
            result = services.undelete(backup.filename, actor=actor, objects=form.objects, dry_run=not confirmed)
        except BackupError as error:
            self.report_failure(request, f"Nothing was undeleted from {backup.filename}: {error.message}")
            return TemplateResponse(request, page, context)
        if not confirmed:
            context.update(step="preview", result=result, to_insert=sum(map(len, result.inserted.values())))
            return TemplateResponse(request, page, context)
        self.message_user(
            request,
            f"Undeleted from {backup.filename} into the database {result.database}: {result.summary}.",
            messages.SUCCESS,
        )
        for conflict in result.conflicts:
            self.message_user(request, f"Conflict, not overwritten: {conflict}.", messages.WARNING)
        for warning in result.warnings:
            self.message_user(request, warning, messages.WARNING)
        return HttpResponseRedirect(reverse("admin:backups_backup_change", args=[quote(backup.pk)]))

    def job_redirect(self, job):
        return HttpResponseRedirect(reverse("admin:backups_backup_restore_job", args=[job.pk]))

    @staticmethod
    def cannot_restore(backup, error):
        reason = error.message
        return reason if backup.filename in reason else f"{backup.filename} cannot be restored: {reason}"

    def restore_job_view(self, request, job_id):
        """A restore's progress while it runs; its result once it has ended: of the whole
        database, as a copy, or of chosen models (``RESTORE_KINDS``). Its state is the journal's
        row (and the worker's progress file), so a reload finds it again."""
        try:
            operation = services.get_restore(job_id, actor=actor_for(request))
        except BackupError as error:
            self.report_failure(request, error.message)
            return self.changelist_redirect()
        kind = RESTORE_KINDS[operation.action]
        details = operation.details
        # What the request asked for (a synchronous restore's row has none): the job's page
        # names it before the worker has begun, and a retry repeats it.
        arguments = details.get("arguments", {})
        context = self.page_context(
            request,
            operation=operation,
            kind=kind,
            backup=Backup.objects.filter(filename=operation.filename).first(),
            filename=operation.filename,
            database=operation.database,
            into=details.get("into") or arguments.get("into"),
            chosen=arguments.get("models", []),
        )
        if operation.status in (OperationStatus.PENDING, OperationStatus.RUNNING):
            context.update(
                title=kind.running,
                progress=progress_facts(services.restore_progress(operation.pk)),
                poll_url=reverse("admin:backups_backup_progress", args=[progress_ticket("restore", operation.pk)]),
            )
            return TemplateResponse(request, "admin/backups/backup/job_progress.html", context)
        services.forget_restore_progress(operation.pk)
        succeeded = operation.status == OperationStatus.SUCCEEDED
        undo_name = details.get("pre_restore_backup")
        context.update(
            title=kind.succeeded if succeeded else kind.failed,
            succeeded=succeeded,
            finished=local_time(operation.finished_at),
            warnings=details.get("warnings", []),
            migrations_applied=details.get("migrations_applied", []),
            undo=Backup.objects.filter(filename=undo_name).first() if undo_name else None,
            undo_name=undo_name,
            # A restore that stopped partway, or whose migrate failed after it had loaded, says
            # itself what became of the database.
            unchanged=not {"undone", "failed_migration"} & set(details),
            restored_models=details.get("models", []),
            rows=sorted(details.get("rows", {}).items()),
            findings=details.get("findings", []),
            related=details.get("related", []),
        )
        return TemplateResponse(request, "admin/backups/backup/restore_result.html", context)

    @admin.action(permissions=["restore"], description="Restore the selected backup…")
    def restore_selected(self, request, queryset):
        return self.open_for_one(request, queryset, "restore")

    def open_for_one(self, request, queryset, page):
        """The confirmation page ``page`` of the one selected backup."""
        if len(queryset) != 1:
            self.report_failure(request, "Select exactly one backup to restore.")
            return None
        return HttpResponseRedirect(reverse(f"admin:backups_backup_{page}", args=[quote(queryset[0].pk)]))

    @admin.action(permissions=["restore_copy"], description="Restore the selected backup as a copy…")
    def restore_copy_selected(self, request, queryset):
        return self.open_for_one(request, queryset, "restore_copy")

    @admin.action(permissions=["restore_models"], description="Restore chosen models from the selected backup…")
    def restore_models_selected(self, request, queryset):
        return self.open_for_one(request, queryset, "restore_models")

    @admin.action(permissions=["verify"], description="Verify the selected backups (checksum)")
    def verify_checksums(self, request, queryset):
        self.verify(request, queryset, "checksum")

    @admin.action(permissions=["verify"], description="Verify the selected backups by a restore drill")
    def drill_restores(self, request, queryset):
        self.verify(request, queryset, "restore")

    def verify(self, request, queryset, level):
        actor = actor_for(request)
        what = "Restore drill" if level == "restore" else "Checksum verification"
        for backup in queryset:
            try:
                result = services.verify_backup(backup.filename, actor=actor, level=level)
            except BackupError as error:
                self.report_failure(request, f"{what} of {backup.filename} could not run: {error.message}")
                continue
            if result.passed:
                self.message_user(request, f"{what} of {backup.filename} passed.", messages.SUCCESS)
            else:
                self.report_failure(request, f"{what} of {backup.filename} FAILED: {result.message}")

    def changelist_redirect(self):
        return HttpResponseRedirect(reverse("admin:backups_backup_changelist"))

    # -- saving and deleting through the service --------------------------------------------

    def save_model(self, request, obj, form, change):
        """Only the description changes, in the catalog and in the manifest."""
        try:
            services.update_description(obj.filename, obj.description, actor=actor_for(request))
        except BackupError as error:
            self.report_failure(request, f"The description of {obj.filename} was not saved: {error.message}", obj)

    def delete_model(self, request, obj):
        self.delete_backups(request, [obj])

    def delete_queryset(self, request, queryset):
        backups = list(queryset)
        deleted = self.delete_backups(request, backups)
        if len(deleted) != len(backups) and deleted:
            self.message_user(
                request,
                f"Deleted {len(deleted)} of the {len(backups)} selected backups: "
                + ", ".join(backup.filename for backup in deleted),
                messages.WARNING,
            )

    def delete_backups(self, request, backups):
        """Files, manifests and rows, one backup at a time; returns those that went."""
        actor = actor_for(request)
        deleted = []
        for backup in backups:
            try:
                services.delete_backup(backup.filename, actor=actor)
            except BackupError as error:
                self.report_failure(request, f"{backup.filename} was not deleted: {error.message}", backup)
            else:
                deleted.append(backup)
        if deleted:
            super().log_deletions(request, deleted)
        return deleted

    # -- telling the truth when the service refused -----------------------------------------

    def report_failure(self, request, text, backup=None):
        """An error message, and a note on the request: Django's generic "changed successfully"
        or "Successfully deleted" line and its log entry would otherwise claim what did not happen."""
        failed = request.__dict__.setdefault(FAILED_ON_REQUEST, set())
        failed.add(backup.pk if backup is not None else None)
        self.message_user(request, text, messages.ERROR)

    def message_user(self, request, message, level=messages.INFO, *args, **kwargs):
        if level == messages.SUCCESS and getattr(request, FAILED_ON_REQUEST, None):
            return
        super().message_user(request, message, level, *args, **kwargs)

    def log_change(self, request, obj, message):
        if obj.pk in getattr(request, FAILED_ON_REQUEST, ()):
            return None
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        """Django logs before it deletes; ``delete_backups`` logs afterwards what really went."""


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that record what happened: nobody adds, edits or deletes them here."""

    class Media:
        css = {"all": ["backups/admin.css"]}

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class OperationAdmin(ReadOnlyAdmin):
    """The journal's records are written by the service only; here they are read."""

    change_form_template = "admin/backups/journal_change_form.html"
    change_list_template = "admin/backups/journal_change_list.html"

    @admin.display(description="when", ordering="started_at")
    def started(self, operation):
        return local_time(operation.started_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, operation):
        return local_time(operation.finished_at)


class RestoreKindFilter(admin.SimpleListFilter):
    """The kinds of restore the history holds (the journal's actions hold many more)."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [(action.value, action.label) for action in RESTORE_ACTIONS]

    def queryset(self, request, queryset):
        return queryset.filter(action=self.value()) if self.value() else queryset


@admin.register(RestoreHistory)
class RestoreHistoryAdmin(OperationAdmin):
    """Whatever put a backup's data somewhere: whole restores, copies, model restores and
    undeletes (dry runs too, as refused attempts are: who tried what)."""

    list_display = (
        "started",
        "kind",
        "actor",
        "filename",
        "database",
        "origin",
        "client_address",
        "status",
        "message",
        "pre_restore_backup",
    )
    list_filter = (RestoreKindFilter, "status", "origin", "database")
    search_fields = ("filename", "actor", "message")
    date_hierarchy = "started_at"
    fields = (
        "started",
        "finished",
        "kind",
        "actor",
        "origin",
        "client_address",
        "filename",
        "database",
        "status",
        "message",
        "pre_restore_backup",
    )
    readonly_fields = fields

    @admin.display(description="kind", ordering="action")
    def kind(self, operation):
        if operation.details.get("dry_run"):
            return f"{operation.get_action_display()} (dry run)"
        return operation.get_action_display()

    @admin.display(description="pre-restore backup")
    def pre_restore_backup(self, operation):
        return operation.details.get("pre_restore_backup") or "-"

    def has_view_permission(self, request, obj=None):
        # Whoever sees the backups sees what was restored from them.
        return request.user.has_perm("backups.view_backup") or super().has_view_permission(request, obj)


@admin.register(Operation)
class AuditLogAdmin(OperationAdmin):
    list_display = ("started", "action", "status", "actor", "origin", "client_address", "filename", "message")
    list_filter = ("action", "status", "origin", "database")
    search_fields = ("filename", "actor", "message")
    date_hierarchy = "started_at"
    fields = (
        "started",
        "finished",
        "action",
        "status",
        "actor",
        "origin",
        "client_address",
        "filename",
        "database",
        "message",
        "details_json",
    )
    readonly_fields = fields

    @admin.display(description="details")
    def details_json(self, operation):
        return format_html("<pre>{}</pre>", json.dumps(operation.details, indent=2, sort_keys=True))


@admin.register(DatabaseCopy)
class DatabaseCopyAdmin(ReadOnlyAdmin):
    """Copies made by 'restore --into' (or the API's "into"): listed, and dropped by the service."""

    list_display = ("name", "database", "engine", "host", "filename", "created", "created_by")
    readonly_fields = ("name", "database", "engine", "host", "filename", "created", "created_by")
    fields = readonly_fields
    actions = ["drop_copies"]

    @admin.display(description="created", ordering="created_at")
    def created(self, copy):
        return local_time(copy.created_at)

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("backups.view_backup") or super().has_view_permission(request, obj)

    def has_drop_permission(self, request):
        return request.user.has_perm("backups.restore_copy")

    @admin.action(permissions=["drop"], description="Drop the selected copies' databases")
    def drop_copies(self, request, queryset):
        for copy in queryset:
            try:
                services.drop_copy(str(copy.pk), actor=actor_for(request))
            except BackupError as error:
                self.message_user(request, error.message, messages.ERROR)
            else:
                self.message_user(request, f"Dropped the copy {copy.name}.", messages.SUCCESS)
