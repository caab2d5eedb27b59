"""Telling people: email through Django's mail framework and a webhook that Slack and Mattermost
accept (a JSON POST with ``text``). A notification that cannot be sent is logged; it never
breaks the backup, restore or check that caused it."""

import json
import logging
import socket
import urllib.request

from django.core.mail import send_mail

from ..conf import backup_settings

logger = logging.getLogger("backups")

WEBHOOK_TIMEOUT = 10


def notify(subject, text):
    """Send ``subject`` and ``text`` to every configured channel; returns the channels that
    took it."""
    delivered = []
    try:
        recipients = backup_settings.NOTIFY_EMAILS
        webhook = backup_settings.NOTIFY_WEBHOOK_URL
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
    return delivered
