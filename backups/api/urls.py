"""Routes of the REST API, without trailing slashes (with one they work too)."""

from rest_framework.routers import SimpleRouter

from .views import BackupViewSet


class OptionalSlashRouter(SimpleRouter):
    """The spec's paths have no trailing slash; clients that add one are served as well."""

    def __init__(self):
        super().__init__(trailing_slash=False)
        self.trailing_slash = "/?"


router = OptionalSlashRouter()
router.register("backups", BackupViewSet, basename="backup")

urlpatterns = router.urls
