# The HoppyBrew backend image; the scheduler service runs the same image with docker/scheduler.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TZ=UTC \
    BACKUP_DIR=/app/data/backups

# PostgreSQL 15 client tools, matching the major version of the db service (pg_dump must not be
# older than the server); cron for scheduled backups; age to decrypt backups by hand.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client-15 mariadb-client cron age tzdata \
 && rm -rf /var/lib/apt/lists/* \
 # In unprivileged containers pam_loginuid fails and cron silently skips every job.
 && sed -i 's/^\(session\s\+\)required\(\s\+pam_loginuid\.so\)/\1optional\2/' /etc/pam.d/cron \
 && useradd --create-home --uid 1000 app

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Bytecode written now: the app's user cannot write it under /app, and PYTHONDONTWRITEBYTECODE
# would keep it from trying, so every cron job would compile the app again at start-up.
RUN python -m compileall -q backups hoppybrew_site \
 && DJANGO_SECRET_KEY=build-only python manage.py collectstatic --noinput --verbosity 0 \
 && mkdir -p /app/data/backups /app/data/logs \
 && chmod 700 /app/data/backups \
 && chown -R app:app /app/data

USER app
EXPOSE 8000
CMD ["docker/backend"]
