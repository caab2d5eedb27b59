"""The REST API: thin. Parse the request, call the service, shape the answer."""

import gc
from contextlib import contextmanager

from django.db import DatabaseError, connections
from django.http import QueryDict
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import status, viewsets
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle

from .. import services
from ..conf import backup_settings
from ..downloads import download_response
from ..models import Action, Origin
from ..naming import FILENAME_REGEX
from . import serializers
from .errors import exception_handler

MAX_BODY_BYTES = 64 * 1024
ERRORS = {
    code: OpenApiResponse(serializers.ErrorSerializer, description=text)
    for code, text in {
        400: "Bad request",
        401: "Not authenticated",
        403: "Permission denied",
        404: "No such backup",
        409: "Another backup or restore of this database is running",
        413: "Request body too large",
        422: "The backup file is damaged",
        429: "Too many requests",
        500: "The dump or restore tool failed",
        503: "A tool, the database or the storage is unavailable",
        507: "No space left on the backup storage",
    }.items()
}


FILENAME_PARAMETER = OpenApiParameter(
    "filename", str, OpenApiParameter.PATH, required=True, pattern=FILENAME_REGEX, description="A backup's filename"
)


JOB_PARAMETER = OpenApiParameter("job_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="A restore's id")
PAGING_PARAMETERS = [
    OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1},
        description="Page size: answer a page envelope instead of the array",
    ),
    OpenApiParameter("offset", {"type": "integer", "minimum": 0}, description="Backups to skip, with limit"),
]
LOCATION_HEADER = OpenApiParameter(
    "Location", str, OpenApiParameter.HEADER, response=[202], description="Where to poll for the outcome"
)
BACKUP_LIST = PolymorphicProxySerializer(
    component_name="BackupList",
    serializers=[serializers.BackupSummarySerializer(many=True), serializers.PagedBackupsSerializer],
    resource_type_field_name=None,
    many=False,
)


# The 202's message for each kind of restore (``services.restore_kind``).
STARTED = {
    Action.RESTORE: "Restore started",
    Action.RESTORE_COPY: "Restore into a new database started",
    Action.RESTORE_MODELS: "Restore of chosen models started",
}


def errors(*codes):
    return {code: ERRORS[code] for code in (400, 401, 403, 429, 500, 503) + codes}


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = f"The request body is too large (at most {MAX_BODY_BYTES} bytes)."


class BackupPagination(LimitOffsetPagination):
    """DRF's limit/offset pages, asked for with ``?limit=``; a value that is not a whole number
    in range is refused (400) rather than silently ignored, like every other bad input."""

    def paginate_queryset(self, queryset, request, view=None):
        self.get_offset(request)  # checked even when no limit asks for a page
        return super().paginate_queryset(queryset, request, view)

    def get_limit(self, request):
        if self.limit_query_param not in request.query_params:
            return None  # no page: the spec's bare array
        return self.whole_number(request, self.limit_query_param, minimum=1)

    def get_offset(self, request):
        if self.offset_query_param not in request.query_params:
            return 0
        return self.whole_number(request, self.offset_query_param, minimum=0)

    @staticmethod
    def whole_number(request, name, minimum):
        values = request.query_params.getlist(name)
        if len(values) == 1 and values[0].isascii() and values[0].isdigit() and int(values[0]) >= minimum:
            return int(values[0])
        raise ValidationError({name: [f"Expected one whole number of at least {minimum}."]})


# The app's own, so that a project needs no REST_FRAMEWORK settings for it.
AUTHENTICATION_CLASSES = [TokenAuthentication, SessionAuthentication]


class BackupThrottle(ScopedRateThrottle):
    """Rate limits for creating and restoring, per user, from BACKUP_THROTTLE_* (or off)."""

    def get_rate(self):
        return getattr(backup_settings, f"THROTTLE_{self.scope.upper()}")

    def allow_request(self, request, view):
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope or self.get_rate() is None:
            return True
        return super().allow_request(request, view)


@contextmanager
def garbage_collection_paused():
    """Listing 10,000 backups builds some 300,000 small dicts and lists, which sets off several
    full passes of Python's cycle collector over every object alive (measured: a median of
    180 ms and outliers of 400 ms, against 147 ms without). They hold no cycles; reference
    counting frees them all the same."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def actor_for(request):
    return services.Actor.for_request(request, Origin.API)


def bearer_token(request):
    """The monitor's token from ``Authorization: Bearer ...``, or None."""
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def status_body(message, filename, timestamp=None, state="success"):
    return {
        "status": state,
        "message": message,
        "filename": filename,
        "timestamp": serializers.api_datetime(timestamp or timezone.now()),
    }


@extend_schema_view(
    list=extend_schema(
        summary="List backups that can be restored, newest first (an array; a page with ?limit=)",
        parameters=[
            OpenApiParameter(
                "database", str, enum=list(connections), description="Only backups of this database alias"
            ),
            *PAGING_PARAMETERS,
        ],
        responses={200: BACKUP_LIST, **errors()},
    ),
    retrieve=extend_schema(
        summary="One backup",
        parameters=[FILENAME_PARAMETER],
        responses={200: serializers.BackupSerializer, **errors(404)},
    ),
    create=extend_schema(
        summary="Create a backup (with async: start it and answer at once)",
        request=serializers.CreateRequestSerializer,
        parameters=[LOCATION_HEADER],
        responses={
            201: serializers.CreateResponseSerializer,
            202: OpenApiResponse(serializers.AcceptedSerializer, description="Started; poll the Location"),
            **errors(409, 413, 507),
        },
    ),
    destroy=extend_schema(
        summary="Delete a backup, its file and manifest",
        parameters=[FILENAME_PARAMETER],
        responses={200: serializers.StatusSerializer, **errors(404, 409)},
    ),
)
class BackupViewSet(viewsets.ViewSet):
    # The API's contract does not depend on the project's REST_FRAMEWORK settings: JSON in and
    # out, a token (rest_framework.authtoken) or the admin's session.
    authentication_classes = AUTHENTICATION_CLASSES
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser]
    # Who may do what is the service's decision (staff, and the action's permission), so that
    # refused attempts are journaled; the API only insists on knowing who asks.
    permission_classes = [IsAuthenticated]
    throttle_classes = [BackupThrottle]
    lookup_field = "filename"
    # Anything without a slash reaches the view, which answers 400 for names that are not
    # backup names; the service checks the pattern before any file is touched.
    lookup_value_regex = r"[^/]+"

    def get_exception_handler(self):
        return exception_handler

    def handle_exception(self, exc):
        # Authenticating a caller reads the site's database too: when it is down, a monitor
        # polling health still gets the health answer, unhealthy, rather than an error body.
        if self.action == "health" and isinstance(exc, DatabaseError):
            return Response(services.catalog_down_report(exc).as_dict(with_filenames=False), status=503)
        return super().handle_exception(exc)

    def initial(self, request, *args, **kwargs):
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise RequestTooLarge()
        super().initial(request, *args, **kwargs)

    def perform_content_negotiation(self, request, force=False):
        # DRF negotiates before the view runs, and no renderer offers application/octet-stream:
        # a download must not be refused for its Accept header. Errors still render as JSON.
        return super().perform_content_negotiation(request, force=force or self.action == "download")

    @property
    def throttle_scope(self):
        # An undelete is a restore of chosen rows: it counts against the restores' rate.
        return {"create": "create", "restore": "restore", "undelete": "restore"}.get(self.action)

    def parse(self, serializer_class, request):
        data = request.data
        if isinstance(data, QueryDict) and not data:
            data = {}  # no body at all: every field takes its default
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def list(self, request):
        database = request.query_params.get("database") or None
        backups = services.list_backups(actor=actor_for(request), database=database)
        # The spec's bare array, unless a page is asked for with ?limit=.
        paginator = BackupPagination()
        page = paginator.paginate_queryset(backups, request, view=self)
        with garbage_collection_paused():
            items = serializers.BackupSummarySerializer(backups if page is None else page, many=True).data
        if page is None:
            return Response(items)
        return paginator.get_paginated_response(items)

    def retrieve(self, request, filename=None):
        backup = services.get_backup(filename, actor=actor_for(request))
        return Response(serializers.BackupSerializer(backup).data)

    def create(self, request):
        data = self.parse(serializers.CreateRequestSerializer, request)
        if data["async"]:
            backup = services.start_backup(
                actor=actor_for(request), description=data["description"], database=data["database"]
            )
            body = status_body("Backup started", backup.filename, backup.created_at, state="pending")
            return self.accepted(body, self.reverse_action("detail", kwargs={"filename": backup.filename}))
        backup = services.create_backup(
            actor=actor_for(request), description=data["description"], database=data["database"]
        )
        body = status_body("Backup created successfully", backup.filename, backup.created_at)
        body["warnings"] = [backup.offsite_error] if backup.offsite_error else []
        return Response(body, status=status.HTTP_201_CREATED)

    def accepted(self, body, location):
        body["message"] += f"; poll {location} for its progress and outcome"
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": location})

    def destroy(self, request, filename=None):
        backup = services.delete_backup(filename, actor=actor_for(request))
        return Response(status_body("Backup deleted successfully", backup.filename))

    @extend_schema(
        summary="Download the stored backup file (encrypted ones stay encrypted)",
        description="Answers with the file as it is stored, whatever the Accept header says. "
        "X-Backup-SHA256 (hex, as sha256sum prints it) and Repr-Digest carry its sha256.",
        parameters=[FILENAME_PARAMETER],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **errors(404)},
    )
    @action(detail=True, methods=["get"])
    def download(self, request, filename=None):
        return download_response(*services.open_backup(filename, actor=actor_for(request)))

    @extend_schema(
        summary='Restore the database from a backup (all of it; chosen models with "models"; a copy with "into")',
        request=serializers.RestoreRequestSerializer,
        parameters=[LOCATION_HEADER],
        responses={
            200: PolymorphicProxySerializer(
                component_name="RestoreOutcome",
                serializers=[serializers.RestoreResponseSerializer, serializers.ModelRestoreResponseSerializer],
                resource_type_field_name=None,
            ),
            201: OpenApiResponse(serializers.CopyResponseSerializer, description='Restored as a copy ("into")'),
            202: OpenApiResponse(serializers.RestoreAcceptedSerializer, description="Started; poll the Location"),
            **errors(404, 409, 422),
        },
    )
    @action(detail=False, methods=["post"])
    def restore(self, request):
        data = self.parse(serializers.RestoreRequestSerializer, request)
        if data["async"]:
            job = services.start_restore(
                data["filename"],
                actor=actor_for(request),
                target=data["target_database"],
                into=data["into"],
                models=data["models"],
                include_related=data["include_related"],
                pre_restore_backup=data["pre_restore_backup"],
                force_ahead=data["force_ahead"],
                migrate=data["migrate"],
            )
            body = status_body(STARTED[job.action], job.filename, job.started_at, state="pending")
            body["job_id"] = str(job.pk)
            return self.accepted(body, self.reverse_action("restore-job", kwargs={"job_id": job.pk}))
        kind = services.restore_kind(
            data["filename"], actor=actor_for(request), into=data["into"], models=data["models"]
        )
        if kind == Action.RESTORE_COPY:
            return self.restore_copy(request, data)
        if kind == Action.RESTORE_MODELS:
            return self.restore_models(request, data)
        result = services.restore_backup(
            data["filename"],
            actor=actor_for(request),
            target=data["target_database"],
            pre_restore_backup=data["pre_restore_backup"],
            force_ahead=data["force_ahead"],
            migrate=data["migrate"],
        )
        body = status_body("Database restored successfully", result.backup.filename, result.finished_at)
        body["pre_restore_backup"] = result.pre_restore_backup.filename if result.pre_restore_backup else None
        body["method"] = result.method
        body["undo_database"] = result.undo_database
        body["warnings"] = result.warnings
        body["migrations_applied"] = result.migrations_applied
        body["job_id"] = str(result.operation.pk)  # GET /backups/restores/{job_id} shows it again
        return Response(body)

    def restore_copy(self, request, data):
        result = services.restore_copy(
            data["filename"], actor=actor_for(request), into=data["into"], target=data["target_database"]
        )
        body = status_body(f"Restored into the new database {result.copy.name}", data["filename"])
        body["copy"] = serializers.DatabaseCopySerializer(result.copy).data
        body["warnings"] = result.warnings
        body["job_id"] = str(result.operation.pk)
        return Response(body, status=status.HTTP_201_CREATED)

    def restore_models(self, request, data):
        result = services.restore_models(
            data["filename"],
            actor=actor_for(request),
            models=data["models"],
            include_related=data["include_related"],
            target=data["target_database"],
            pre_restore_backup=data["pre_restore_backup"],
        )
        body = status_body("Models restored successfully", result.backup.filename, result.finished_at)
        body.update(
            models=result.models,
            rows=result.rows,
            pre_restore_backup=result.pre_restore_backup.filename if result.pre_restore_backup else None,
            warnings=result.warnings,
            job_id=str(result.operation.pk),
        )
        return Response(body)

    @extend_schema(
        summary="Undelete: bring back chosen objects, and those that depended on them, from a backup",
        description="Only the rows missing from the database are inserted, in one transaction; rows there with "
        "other values are listed as conflicts and never overwritten. With dry_run nothing is changed.",
        parameters=[FILENAME_PARAMETER],
        request=serializers.UndeleteRequestSerializer,
        responses={200: serializers.UndeleteResponseSerializer, **errors(404, 409, 413, 422)},
    )
    @action(detail=True, methods=["post"])
    def undelete(self, request, filename=None):
        data = self.parse(serializers.UndeleteRequestSerializer, request)
        result = services.undelete(
            filename,
            actor=actor_for(request),
            objects=data["objects"],
            target=data["target_database"],
            dry_run=data["dry_run"],
        )
        message = "Dry run of the undelete: nothing was changed" if result.dry_run else "Objects undeleted successfully"
        body = status_body(message, result.backup.filename, result.finished_at)
        body.update(
            dry_run=result.dry_run,
            inserted={label: {"count": len(pks), "pks": pks} for label, pks in result.inserted.items()},
            unchanged=result.unchanged,
            conflicts=[
                {"model": conflict.model, "pk": conflict.pk, "differs": list(conflict.differs)}
                for conflict in result.conflicts
            ],
            warnings=result.warnings,
        )
        return Response(body)

    @extend_schema(
        summary='The copies made by restores with "into"',
        responses={200: serializers.DatabaseCopySerializer(many=True), **errors()},
    )
    @action(detail=False, methods=["get"])
    def copies(self, request):
        return Response(
            serializers.DatabaseCopySerializer(services.list_copies(actor=actor_for(request)), many=True).data
        )

    @extend_schema(
        summary="Drop a copy's database",
        parameters=[OpenApiParameter("copy", str, OpenApiParameter.PATH, description="The copy's id or name")],
        responses={200: serializers.StatusSerializer, **errors(404)},
    )
    @action(detail=False, methods=["delete"], url_path=r"copies/(?P<copy>[^/]+)", url_name="copy")
    def drop_copy(self, request, copy=None):
        dropped = services.drop_copy(copy, actor=actor_for(request))
        return Response(status_body(f"Dropped the copy {dropped.name}", dropped.filename))

    @extend_schema(
        summary="What a restore of this backup would do: the database it overwrites and the migration difference",
        parameters=[
            FILENAME_PARAMETER,
            OpenApiParameter("target_database", str, enum=sorted(connections), description="Restore into this alias"),
        ],
        responses={200: serializers.RestorePreviewSerializer, **errors(404)},
    )
    @action(detail=True, methods=["get"], url_path="restore-preview", url_name="restore-preview")
    def restore_preview(self, request, filename=None):
        target = request.query_params.get("target_database") or None
        preview = services.restore_preview(filename, actor=actor_for(request), target=target)
        return Response(serializers.RestorePreviewSerializer(preview).data)

    @extend_schema(
        summary="A restore: its status, timing and outcome (where an asynchronous restore is polled)",
        parameters=[JOB_PARAMETER],
        responses={200: serializers.RestoreJobSerializer, **errors(404)},
    )
    @action(detail=False, methods=["get"], url_path=r"restores/(?P<job_id>[^/]+)", url_name="restore-job")
    def restore_job(self, request, job_id=None):
        operation = services.get_restore(job_id, actor=actor_for(request))
        return Response(serializers.RestoreJobSerializer(operation).data)

    @extend_schema(
        summary="Delete backups older than the retention period",
        request=serializers.CleanupRequestSerializer,
        responses={200: serializers.CleanupResponseSerializer, **errors()},
    )
    @action(detail=False, methods=["post"])
    def cleanup(self, request):
        data = self.parse(serializers.CleanupRequestSerializer, request)
        result = services.cleanup_backups(actor=actor_for(request), dry_run=data["dry_run"])
        return Response(
            {
                "deleted_count": len(result.deleted),
                "deleted_files": [backup.filename for backup in result.deleted],
                "total_size_freed": result.total_size_freed,
                "retention_days": result.retention_days,
                "cleanup_date": serializers.api_datetime(result.cleanup_date),
                "dry_run": result.dry_run,
                "kept": [{"filename": name, "reasons": reasons} for name, reasons in sorted(result.kept.items())],
                "deleted_failed_attempts": len(result.deleted_attempts),
            }
        )

    @extend_schema(
        summary="The backup schedule: cron expressions, next runs, retention, last scheduled backup",
        responses={200: serializers.ScheduleSerializer, **errors()},
    )
    @action(detail=False, methods=["get"])
    def schedule(self, request):
        return Response(services.schedule_status(actor=actor_for(request)))

    @extend_schema(
        summary="Verify a backup: its checksum, or a restore drill into a scratch database",
        parameters=[FILENAME_PARAMETER],
        request=serializers.VerifyRequestSerializer,
        responses={200: serializers.VerifyResponseSerializer, **errors(404, 409)},
    )
    @action(detail=True, methods=["post"])
    def verify(self, request, filename=None):
        data = self.parse(serializers.VerifyRequestSerializer, request)
        result = services.verify_backup(filename, actor=actor_for(request), level=data["level"])
        return Response({"filename": result.filename, **result.as_dict()})

    @extend_schema(
        summary="Are backups healthy? 200 when every database has a recent backup and verification passes",
        auth=[{"tokenAuth": []}, {"cookieAuth": []}, {"healthToken": []}, {}],
        responses={
            200: serializers.HealthSerializer,
            503: OpenApiResponse(serializers.HealthSerializer, description="Unhealthy; the problems say why"),
            401: ERRORS[401],
        },
    )
    @action(detail=False, methods=["get"], permission_classes=[AllowAny], throttle_classes=[])
    def health(self, request):
        healthy, report = services.health_for(actor=actor_for(request), token=bearer_token(request))
        return Response(report, status=200 if healthy else 503)

    @extend_schema(
        summary="Rebuild the catalog from the manifests in storage",
        request=None,
        responses={200: serializers.SyncResponseSerializer, **errors()},
    )
    @action(detail=False, methods=["post"])
    def sync(self, request):
        result = services.sync_catalog(actor=actor_for(request))
        return Response(
            {
                "status": "success",
                "message": f"Catalog synchronised: {result.summary}",
                "added": result.added,
                "updated": result.updated,
                "missing": result.missing,
                "interrupted": result.interrupted,
                "copied_offsite": result.copied_offsite,
                "offsite_failed": result.offsite_failed,
            }
        )
