from django.apps import AppConfig


class HoppyBrewSiteConfig(AppConfig):
    """The site itself, for its set-up commands."""

    name = "hoppybrew_site"
    verbose_name = "HoppyBrew site"
