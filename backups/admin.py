"""The Django admin for backups: thin. Every button, link and action calls the service, which
checks the permission again, and reports the outcome as an admin message or a result page."""

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from . import services
from .downloads import download_response
from .exceptions import BackupError, RestoreIncomplete
from .formatting import human_size, local_time, verification_label
from .models import Backup, BackupStatus, DatabaseCopy, Operation, Origin, RestoreHistory

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


@admin.register(Backup)
class BackupAdmin(admin.ModelAdmin):
    list_display = (
        "filename",
        "created",
        "description",
        "size",
        "status_column",
        "verified",
        "trigger",
        "database",
    )
    list_editable = ("description",)
    list_filter = ("status", "trigger", "database")
    date_hierarchy = "created_at"
    search_fields = ("filename", "description")
    ordering = ("-created_at", "-filename")
    actions = ["restore_selected", "verify_checksums", "drill_restores"]
    formfield_overrides = {models.TextField: {"widget": forms.Textarea(attrs={"rows": 2, "cols": 32})}}
    fieldsets = (
        (None, {"fields": ("filename", "description", "status", "error")}),
        ("Database", {"fields": ("database", "engine", "database_name", "database_host")}),
        ("File", {"fields": ("created", "finished", "size", "uncompressed_size", "sha256")}),
        ("Origin", {"fields": ("trigger", "origin", "created_by")}),
        ("Verification", {"fields": ("verified", "verification_message")}),
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
        "size",
        "uncompressed_size",
        "sha256",
        "trigger",
        "origin",
        "created_by",
        "verified",
        "verification_message",
        "applied_migrations",
        "django_version",
        "app_version",
        "manifest_json",
    )

    # -- columns and fields -----------------------------------------------------------------

    @admin.display(description="created", ordering="created_at")
    def created(self, backup):
        return local_time(backup.created_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, backup):
        return local_time(backup.finished_at)

    @admin.display(description="size", ordering="size_bytes")
    def size(self, backup):
        return human_size(backup.size_bytes)

    @admin.display(description="uncompressed", ordering="uncompressed_bytes")
    def uncompressed_size(self, backup):
        return human_size(backup.uncompressed_bytes)

    @admin.display(description="status", ordering="status")
    def status_column(self, backup):
        if backup.error:
            return format_html('<span title="{}">{}</span>', backup.error, backup.get_status_display())
        return backup.get_status_display()

    @admin.display(description="verified", ordering="verified_at")
    def verified(self, backup):
        return verification_label(backup)

    @admin.display(description="verification result")
    def verification_message(self, backup):
        return (backup.verification or {}).get("message", "-")

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
        """Restore and download links, for the users who may follow them."""
        can_restore = self.has_restore_permission(request)
        can_download = self.has_download_permission(request)
        if not (can_restore or can_download):
            return self.list_display

        @admin.display(description="")
        def links(backup):
            if backup.status != BackupStatus.SUCCEEDED:
                return ""
            urls = []
            if can_restore:
                urls.append((reverse("admin:backups_backup_restore", args=[quote(backup.pk)]), "Restore…"))
            if can_download:
                urls.append((reverse("admin:backups_backup_download", args=[quote(backup.pk)]), "Download"))
            return format_html_join(" | ", '<a href="{}">{}</a>', urls)

        return (*self.list_display, links)

    # -- permissions ------------------------------------------------------------------------

    def has_add_permission(self, request):
        # Backups are made by the service (the "Create backup" button), never typed into a form.
        return False

    def has_create_permission(self, request):
        return request.user.has_perm("backups.add_backup")

    def has_restore_permission(self, request, obj=None):
        return request.user.has_perm("backups.restore_backup")

    def has_download_permission(self, request, obj=None):
        return request.user.has_perm("backups.download_backup")

    def has_verify_permission(self, request, obj=None):
        return request.user.has_perm("backups.verify_backup")

    # -- pages --------------------------------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("create/", view(self.create_view), name="backups_backup_create"),
            path("sync/", view(self.sync_view), name="backups_backup_sync"),
            path("<path:object_id>/restore/", view(self.restore_view), name="backups_backup_restore"),
            path("<path:object_id>/download/", view(self.download_view), name="backups_backup_download"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        context = {
            "can_create": self.has_create_permission(request),
            "description_max_length": Backup._meta.get_field("description").max_length,
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {
            "can_restore": self.has_restore_permission(request),
            "can_download": self.has_download_permission(request),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)

    def create_view(self, request):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_create_permission(request):
            raise PermissionDenied
        try:
            backup = services.create_backup(actor=actor_for(request), description=request.POST.get("description", ""))
        except BackupError as error:
            self.report_failure(request, f"The backup was not created: {error.message}")
        else:
            self.message_user(
                request, f"Backup {backup.filename} created ({human_size(backup.size_bytes)}).", messages.SUCCESS
            )
        return self.changelist_redirect()

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

    def restore_view(self, request, object_id):
        """GET: what will be overwritten and by what. POST, with the database's name typed in:
        the restore, and a page saying how it went.

        Not atomic, on purpose: a restore inside a transaction would wait for itself forever.
        The outcome is rendered in the POST's own response, not as a message after a redirect,
        because the restore rewrites the session table and may have logged the user out.
        """
        if not self.has_restore_permission(request):
            raise PermissionDenied
        backup = self.get_object(request, unquote(object_id))
        if backup is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        try:
            preview = services.restore_preview(backup.filename, actor=actor_for(request))
        except BackupError as error:
            reason = error.message
            self.report_failure(
                request, reason if backup.filename in reason else f"{backup.filename} cannot be restored: {reason}"
            )
            return self.changelist_redirect()
        form = RestoreConfirmationForm(request.POST or None, database_name=preview.database["name"])
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "backup": backup,
            "database": preview.database,
            "backup_created": local_time(backup.created_at),
            "backup_size": human_size(backup.size_bytes),
            "backup_uncompressed_size": human_size(backup.uncompressed_bytes),
        }
        if request.method == "POST" and form.is_valid():
            return self.restore(request, backup, context)
        context.update(
            title="Restore the database from a backup",
            form=form,
            database_size=human_size(preview.database["size_bytes"]),
            preview=preview,
        )
        return TemplateResponse(request, "admin/backups/backup/restore_confirmation.html", context)

    def restore(self, request, backup, context):
        try:
            result = services.restore_backup(backup.filename, actor=actor_for(request))
        except BackupError as error:
            # A MySQL restore that stopped partway says itself what became of the database.
            unchanged = not isinstance(error, RestoreIncomplete)
            context.update(title="The restore failed", error=error.message, unchanged=unchanged)
            status = error.status_code
        else:
            context.update(
                title="Database restored",
                result=result,
                finished=local_time(result.finished_at),
            )
            status = 200
        return TemplateResponse(request, "admin/backups/backup/restore_result.html", context, status=status)

    @admin.action(permissions=["restore"], description="Restore the selected backup…")
    def restore_selected(self, request, queryset):
        if len(queryset) != 1:
            self.report_failure(request, "Select exactly one backup to restore.")
            return None
        return HttpResponseRedirect(reverse("admin:backups_backup_restore", args=[quote(queryset[0].pk)]))

    @admin.action(permissions=["verify"], description="Verify the selected backups (checksum)")
    def verify_checksums(self, request, queryset):
        self.verify(request, queryset, "checksum")

    @admin.action(permissions=["verify"], description="Verify the selected backups by a restore drill")
    def drill_restores(self, request, queryset):
        self.verify(request, queryset, "restore")

    def verify(self, request, queryset, level):
        actor = actor_for(request)
        for backup in queryset:
            try:
                result = services.verify_backup(backup.filename, actor=actor, level=level)
            except BackupError as error:
                self.report_failure(request, f"{backup.filename} could not be verified: {error.message}")
                continue
            if result.passed:
                self.message_user(request, f"{backup.filename}: {result.message}.", messages.SUCCESS)
            else:
                self.report_failure(request, f"{backup.filename} FAILED {level} verification: {result.message}")

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


class OperationAdmin(admin.ModelAdmin):
    """The journal's records are written by the service only; here they are read."""

    @admin.display(description="when", ordering="started_at")
    def started(self, operation):
        return local_time(operation.started_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, operation):
        return local_time(operation.finished_at)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(RestoreHistory)
class RestoreHistoryAdmin(OperationAdmin):
    list_display = (
        "started",
        "actor",
        "filename",
        "database",
        "origin",
        "client_address",
        "status",
        "message",
        "pre_restore_backup",
    )
    list_filter = ("status", "origin", "database")
    search_fields = ("filename", "actor", "message")
    date_hierarchy = "started_at"
    fields = (
        "started",
        "finished",
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
class DatabaseCopyAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

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
