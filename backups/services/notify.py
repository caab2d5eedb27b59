"""Telling people: Apprise (``BACKUP_NOTIFY_URLS``: Slack, Discord, Teams, Telegram, Matrix,
ntfy, Gotify, email and many more, one URL each), email through Django's mail framework, and a
webhook that Slack and Mattermost accept (a JSON POST with ``text``). A notification that cannot
be sent is logged; it never breaks the backup, restore or check that caused it."""

import json
import logging
import socket
import urllib.request

from django.core.mail import send_mail

from ..conf import backup_settings

logger = logging.getLogger("backups")

WEBHOOK_TIMEOUT = 10


def notify(subject, text, outcome="info"):
    """Send ``subject`` and ``text`` to every configured channel; returns the channels that
    took it. ``outcome`` (info, success, failure) sets how Apprise services show it."""
    delivered = []
    try:
        recipients = backup_settings.NOTIFY_EMAILS
        webhook = backup_settings.NOTIFY_WEBHOOK_URL
        apprise_urls = backup_settings.NOTIFY_URLS
    except Exception:
        logger.exception("Backup notification not sent: the notification settings are invalid")
        return delivered
    host = socket.gethostname()
    if recipients:
        try:
            send_mail(f"[HoppyBrew backups] {subject}", f"{text}\n\n-- {host}", None, recipients)
            delivered.append("email")
        except Exception as exc:
            logger.error("Backup notification email to %s failed: %s", ", ".join(recipients), exc)
    if webhook:
        body = json.dumps({"text": f"*HoppyBrew backups on {host}: {subject}*\n{text}"}).encode()
        request = urllib.request.Request(webhook, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
                response.read()
            delivered.append("webhook")
        except Exception as exc:
            logger.error("Backup notification webhook failed: %s", exc)
    for position, url in enumerate(apprise_urls, 1):
        if send_apprise(url, f"HoppyBrew backups on {host}: {subject}", text, outcome):
            delivered.append(f"apprise:{scheme_of(url)}")
        else:
            # Apprise URLs hold tokens and passwords: the log names the entry, not the URL.
            logger.error(
                "Backup notification through BACKUP_NOTIFY_URLS entry %d (%s://) failed", position, scheme_of(url)
            )
    return delivered


def send_apprise(url, title, body, outcome):
    """One URL at a time, so that the log can say which one failed (Apprise's own log says why)."""
    import apprise

    sender = apprise.Apprise()
    sender.add(url)
    kind = {"success": apprise.NotifyType.SUCCESS, "failure": apprise.NotifyType.FAILURE}.get(outcome)
    try:
        return bool(sender.notify(title=title, body=body, notify_type=kind or apprise.NotifyType.INFO))
    except Exception:
        logger.exception("Apprise raised while sending a backup notification")
        return False


def scheme_of(url):
    return url.partition("://")[0]
