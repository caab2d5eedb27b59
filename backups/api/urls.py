"""Routes of the REST API, without trailing slashes (with one they work too)."""

from django.urls import re_path
from rest_framework.routers import SimpleRouter

from .metrics import MetricsView
from .views import BackupViewSet


class OptionalSlashRouter(SimpleRouter):
    """The spec's paths have no trailing slash; clients that add one are served as well."""

    def __init__(self):
        super().__init__(trailing_slash=False)
        self.trailing_slash = "/?"


router = OptionalSlashRouter()
router.register("backups", BackupViewSet, basename="backup")

# Before the router's routes, whose detail route would take "metrics" for a filename.
urlpatterns = [re_path(r"^backups/metrics/?$", MetricsView.as_view(), name="backup-metrics"), *router.urls]
