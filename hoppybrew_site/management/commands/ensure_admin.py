"""Make sure an administrator exists, for `make run` on a fresh machine.

Credentials come from DJANGO_ADMIN_USERNAME / DJANGO_ADMIN_PASSWORD; without a password one is
generated and printed once, together with an API token.
"""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create the administrator account and its API token if they do not exist yet."

    def handle(self, *args, **options):
        User = get_user_model()
        username = os.environ.get("DJANGO_ADMIN_USERNAME", "admin")
        user = User.objects.filter(username=username).first()
        if user is not None:
            token, _ = Token.objects.get_or_create(user=user)
            self.stdout.write(f"Administrator '{username}' exists; API token: {token.key}")
            return
        password = os.environ.get("DJANGO_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, email="", password=password)
        token = Token.objects.create(user=user)
        self.stdout.write(self.style.SUCCESS("Created the administrator account (shown only this once):"))
        self.stdout.write(f"  username:  {username}")
        if not os.environ.get("DJANGO_ADMIN_PASSWORD"):
            self.stdout.write(f"  password:  {password}")
        self.stdout.write(f"  API token: {token.key}")
