"""What a project includes: ``path("", include("backups.urls"))`` serves the REST API at /backups."""

from django.urls import include, path

urlpatterns = [path("", include("backups.api.urls"))]
