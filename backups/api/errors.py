"""Every API error as ``{"status": "error", "message": ...}``, for people, never a traceback."""

import logging

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.http import JsonResponse
from django.views.defaults import page_not_found
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

from ..exceptions import UNEXPECTED, BackupError, catalog_error

logger = logging.getLogger("backups")


def error_body(message):
    return {"status": "error", "message": message}


def flatten_validation(detail, prefix=""):
    """DRF's nested validation errors as one readable sentence."""
    if isinstance(detail, dict):
        parts = []
        for field, value in detail.items():
            label = "" if field == "non_field_errors" else f"{prefix}{field}"
            parts.append(flatten_validation(value, f"{label}." if label else ""))
        return " ".join(parts)
    if isinstance(detail, list):
        return " ".join(flatten_validation(item, prefix) for item in detail)
    field = prefix.rstrip(".")
    return f"{field}: {detail}" if field else str(detail)


def exception_handler(exc, context):
    """Maps service errors to their HTTP status, and DRF's own errors to the same body."""
    headers, details = {}, {}
    if isinstance(exc, BackupError):
        code, message, details = exc.status_code, exc.message, exc.details
    elif isinstance(exc, drf_exceptions.ValidationError):
        code, message = status.HTTP_400_BAD_REQUEST, flatten_validation(exc.detail)
    elif isinstance(exc, drf_exceptions.APIException):
        code, message = exc.status_code, str(exc.detail)
        if isinstance(exc, drf_exceptions.Throttled) and exc.wait:
            headers["Retry-After"] = str(int(exc.wait))
    elif isinstance(exc, ImproperlyConfigured):
        logger.error("Backup configuration error: %s", exc)
        code, message = status.HTTP_503_SERVICE_UNAVAILABLE, f"The backup system is misconfigured: {exc}"
    elif isinstance(exc, DatabaseError):
        # The site's own database (catalog, journal, users and tokens) is down or not migrated:
        # the service is unavailable, and the reason is the database's, not a bug.
        error = catalog_error(exc)
        logger.error("Backup API: %s", error.message)
        code, message = error.status_code, error.message
    else:
        logger.exception("Unexpected error in the backup API")
        code, message = status.HTTP_500_INTERNAL_SERVER_ERROR, UNEXPECTED
    if code == status.HTTP_401_UNAUTHORIZED and context.get("request") is not None:
        headers["WWW-Authenticate"] = context["view"].get_authenticate_header(context["request"]) or "Token"
    return Response({**error_body(message), **details}, status=code, headers=headers)


API_PREFIXES = ("/backups", "/api/")


def not_found(request, exception=None):
    """JSON 404 for API paths that match no route (a filename with a slash, say); the usual
    page elsewhere."""
    if request.path.startswith(API_PREFIXES):
        return JsonResponse(error_body("Not found."), status=404)
    return page_not_found(request, exception)
