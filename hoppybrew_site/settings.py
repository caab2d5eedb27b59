"""Settings of the HoppyBrew site, from environment variables and the project's ``.env``.

Every variable is documented in ``.env.example``. The BACKUP_* variables are handed to the
backups app as they are; it parses and checks them (``backups/conf.py``).
"""

import os
import secrets
from pathlib import Path

import environ

from backups.conf import cronjobs, from_environment

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / "data"

# By absolute path: cron starts jobs with an empty environment in another directory.
# Variables already set in the environment win over the file.
env = environ.Env()
environ.Env.read_env(os.environ.get("DJANGO_ENV_FILE") or BASE_DIR / ".env")


def _secret_key():
    """DJANGO_SECRET_KEY, or a random key kept in data/ so that a fresh checkout just runs."""
    if env.str("DJANGO_SECRET_KEY", default=""):
        return env.str("DJANGO_SECRET_KEY")
    path = DATA_DIR / ".secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served locally rather than from a CDN
    # Before django_crontab: its `crontab` command is extended by ours.
    "backups",
    "django_crontab",
    "hoppybrew_site",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hoppybrew_site.urls"
WSGI_APPLICATION = "hoppybrew_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_config(url):
    config = env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets the site keep writing while a backup reads its snapshot; IMMEDIATE avoids
        # lock-upgrade deadlocks between concurrent writers.
        config.setdefault("OPTIONS", {}).update(
            {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE", "timeout": 20}
        )
    elif config["ENGINE"] == "django.db.backends.mysql":
        import pymysql

        pymysql.install_as_MySQLdb()
        config.setdefault("OPTIONS", {}).setdefault("charset", "utf8mb4")
    return config


# DATABASE_URL is the site's database; DATABASE_URL_<NAME> adds the alias <name>.
DATABASES = {"default": database_config(env.str("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'hoppybrew.sqlite3'}"))}
for variable, value in sorted(os.environ.items()):
    if variable.startswith("DATABASE_URL_") and value:
        DATABASES[variable.removeprefix("DATABASE_URL_").lower()] = database_config(value)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# Mail, for backup notifications (BACKUP_NOTIFY_EMAILS).
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="hoppybrew-backups@localhost")

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
WHITENOISE_AUTOREFRESH = DEBUG

# The backup API sets its own authentication, permissions, renderers and throttles; the site
# adds only the API description (drf-spectacular) and a default for any other API view.
REST_FRAMEWORK = {
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "HoppyBrew Backups API",
    "DESCRIPTION": "Back up and restore the HoppyBrew database.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "PREPROCESSING_HOOKS": ["backups.api.schema.spec_paths"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "backups.api.schema.closed_request_bodies",
    ],
    # /backups/health also takes a monitor's own token (BACKUP_HEALTH_TOKEN).
    "APPEND_COMPONENTS": {"securitySchemes": {"healthToken": {"type": "http", "scheme": "bearer"}}},
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Backups: the BACKUP_* variables that are set, as strings; backups.conf holds the defaults.
globals().update(from_environment(os.environ))

# S3-compatible storage (BACKUP_STORAGE_URL or BACKUP_OFFSITE_STORAGE_URL = s3://bucket/prefix):
# django-storages reads these from Django's settings. Credentials stay with boto3, which reads
# AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment itself (or ~/.aws, or a role).
AWS_S3_ENDPOINT_URL = env.str("AWS_S3_ENDPOINT_URL", default="") or None
AWS_S3_REGION_NAME = env.str("AWS_S3_REGION_NAME", default="") or env.str("AWS_DEFAULT_REGION", default="") or None
# Upload part size: memory per upload, and a backup can have at most 10,000 parts (5 MiB: 48 GiB).
AWS_S3_FILE_BUFFER_SIZE = env.int("AWS_S3_FILE_BUFFER_SIZE", default=5 * 1024 * 1024)

# django-crontab: the jobs exist only when BACKUP_ENABLED is true.
CRONJOBS = cronjobs(globals())
CRONTAB_DJANGO_MANAGE_PATH = str(BASE_DIR / "manage.py")
CRONTAB_COMMENT = "hoppybrew-backups"
CRONTAB_COMMAND_PREFIX = env.str("CRONTAB_COMMAND_PREFIX", default="")
CRONTAB_COMMAND_SUFFIX = env.str("CRONTAB_COMMAND_SUFFIX", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "backups": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO"), "propagate": False},
        "django_crontab": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
