"""GET /backups/metrics: the Prometheus text format, for a scraper. Thin: the service gathers."""

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from ..services.metrics import CONTENT_TYPE, metrics_for
from .errors import exception_handler
from .serializers import ErrorSerializer
from .views import AUTHENTICATION_CLASSES, actor_for, bearer_token


class MetricsView(APIView):
    # Who may read is the service's decision: staff, the health token, or anyone when public.
    authentication_classes = AUTHENTICATION_CLASSES
    permission_classes = [AllowAny]
    throttle_classes = []

    def get_exception_handler(self):
        return exception_handler

    def perform_content_negotiation(self, request, force=False):
        # Scrapers ask for text/plain or OpenMetrics; the answer is text/plain whatever they
        # accept, and errors still render as JSON.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        summary="Backup metrics in the Prometheus text format, read from the catalog",
        auth=[{"tokenAuth": []}, {"cookieAuth": []}, {"healthToken": []}, {}],
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="Prometheus text format 0.0.4"),
            401: OpenApiResponse(ErrorSerializer, description="Not authenticated"),
        },
    )
    def get(self, request):
        body = metrics_for(actor=actor_for(request), token=bearer_token(request))
        return HttpResponse(body, content_type=CONTENT_TYPE)
