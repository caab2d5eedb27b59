"""The alarm for when backups stop: is the newest backup of every covered database young enough,
and did the latest verification pass? A change of state is announced once, not at every check."""

import hmac
import logging
from dataclasses import dataclass, field

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.utils import timezone

from ..conf import backup_settings, max_age_hours
from ..exceptions import BackupError, NotAuthenticated, catalog_error
from ..models import Backup, HealthState
from ..storage import destinations
from .notify import notify

logger = logging.getLogger("backups")


@dataclass
class HealthReport:
    healthy: bool
    checked_at: object
    problems: list = field(default_factory=list)  # never names a file: monitors may read them
    databases: dict = field(default_factory=dict)
    # Per database, its own problems and whether it is stale, for the admin's status lights.
    findings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)  # worth knowing, not unhealthy (drills that cannot run)

    @property
    def database_problems(self):
        """alias -> its own problems."""
        return {alias: found["problems"] for alias, found in self.findings.items()}

    def as_dict(self, with_filenames):
        return {
            "status": "healthy" if self.healthy else "unhealthy",
            "checked_at": self.checked_at.isoformat(),
            "max_age_hours": max_age_hours(),
            "problems": self.problems,
            "warnings": self.warnings,
            "databases": self.databases if with_filenames else without_filenames(self.databases),
        }


def without_filenames(facts):
    """``facts`` with every ``*filename`` key left out, however deep."""
    if isinstance(facts, dict):
        return {key: without_filenames(value) for key, value in facts.items() if not key.endswith("filename")}
    return facts


def health_for(*, actor, token=None):
    """The health report as ``actor`` may see it: staff with ``backups.view_backup`` see file
    names; an uptime monitor with BACKUP_HEALTH_TOKEN, or anyone when BACKUP_HEALTH_PUBLIC is
    on, sees the rest. Returns (healthy, report)."""
    with_filenames = require_monitor(actor, token, public=backup_settings.HEALTH_PUBLIC)
    report = check_health()
    return report.healthy, report.as_dict(with_filenames=with_filenames)


def require_monitor(actor, token, *, public):
    """Let in staff with ``backups.view_backup``, a monitor that gives BACKUP_HEALTH_TOKEN, or
    anyone when ``public``; returns whether the caller may also see file names."""
    with_filenames = actor.allowed("view_backup")
    expected = backup_settings.HEALTH_TOKEN
    token_matches = bool(expected and token) and hmac.compare_digest(token, expected)
    if not (with_filenames or public or token_matches):
        raise NotAuthenticated("Give a staff user's credentials or the health token (Authorization: Bearer ...).")
    return with_filenames


CATALOG_DOWN = "The backup catalog cannot be read: the site's database cannot be reached or is not migrated."


def catalog_down_report(exc, now=None):
    """Unhealthy, because the catalog's database failed with ``exc``: nothing can be said about
    the backups, and nothing can be recorded (so no change of state is announced either). The
    problem stays general, since monitors read it; the log has the database's own words."""
    logger.error("Backup health cannot be checked: %s", catalog_error(exc).message)
    return HealthReport(healthy=False, checked_at=now or timezone.now(), problems=[CATALOG_DOWN])


def check_health(now=None):
    """Evaluate every database in BACKUP_DATABASES; announce a change of state. Unhealthy, and
    never an error, when the catalog itself cannot be read."""
    now = now or timezone.now()
    try:
        report = evaluate_health(now)
    except DatabaseError as exc:
        return catalog_down_report(exc, now)
    announce_change(report)
    return report


def evaluate_health(now=None):
    """The health of every database in BACKUP_DATABASES, announcing nothing."""
    now = now or timezone.now()
    limit = max_age_hours()
    report = HealthReport(healthy=True, checked_at=now)
    targets = destinations()
    for alias in backup_settings.DATABASES:
        backups = Backup.objects.filter(database=alias).defer("manifest")
        newest = backups.newest()
        checked = backups.filter(verified_at__isnull=False).order_by("-verified_at").first()
        facts = {"newest_backup_filename": None, "newest_backup_at": None, "age_hours": None, "verification": None}
        problems = []
        findings = report.findings[alias] = {"problems": problems, "stale": False}
        if newest is None:
            problems.append(f"Database {alias!r} has no successful backup.")
        else:
            age = (now - newest.created_at).total_seconds() / 3600
            facts.update(
                newest_backup_filename=newest.filename,
                newest_backup_at=newest.created_at.isoformat(),
                age_hours=round(age, 1),
            )
            if limit is not None and age > limit:
                findings["stale"] = True
                problems.append(
                    f"The newest backup of database {alias!r} is {age:.0f} hours old (limit {limit} hours)."
                )
            problems.extend(copy_problems(alias, newest, targets))
        if checked is not None:
            passed = checked.verification.get("passed", False)
            facts["verification"] = {
                "checked_at": checked.verified_at.isoformat(),
                "level": checked.verification.get("level"),
                "passed": passed,
                "checked_filename": checked.filename,
            }
            if not passed:
                problems.append(
                    f"The latest verification of a backup of database {alias!r} failed "
                    f"({timezone.localtime(checked.verified_at):%Y-%m-%d %H:%M})."
                )
        report.problems.extend(problems)
        blocker = drill_blocker(alias)
        if blocker:
            report.warnings.append(f"Restore drills of database {alias!r} cannot run: {blocker}.")
        report.databases[alias] = facts
    report.healthy = not report.problems
    return report


def drill_blocker(alias):
    """Why restore drills of ``alias`` cannot run, or None (also when its server cannot be
    asked: the backups' own age tells about that)."""
    from ..engines import get_engine

    try:
        return get_engine(alias).drill_blocker()
    except (BackupError, ImproperlyConfigured):
        return None


def copy_problems(alias, newest, targets):
    """Where the newest backup of ``alias`` is missing: a destination without a copy (out of
    reach, or failing: its copies go stale), fewer copies than BACKUP_MIN_COPIES, or none
    off-site when BACKUP_REQUIRE_OFFSITE asks for one."""
    held = [destination for destination in targets if destination.name in newest.locations]
    problems = [
        f"The newest backup of database {alias!r} has no copy in {destination.name}; "
        "see its copy error and run 'manage.py backups sync'."
        for destination in targets
        if destination not in held
    ]
    wanted = backup_settings.MIN_COPIES
    if len(held) < wanted:
        problems.append(
            f"The newest backup of database {alias!r} has {len(held)} of the {wanted} copies "
            "BACKUP_MIN_COPIES asks for."
        )
    if backup_settings.REQUIRE_OFFSITE and not any(destination.offsite for destination in held):
        problems.append(f"The newest backup of database {alias!r} has no off-site copy (BACKUP_REQUIRE_OFFSITE).")
    return problems


def check_health_quietly():
    """After each scheduled job, so that a change of health is announced even when no monitor
    polls /backups/health."""
    try:
        check_health()
    except Exception:
        logger.exception("The backup health check after a scheduled job failed")


def announce_change(report):
    """Notify when the state differs from the last one recorded. The conditional update makes
    exactly one of several simultaneous checks send the notification."""
    state, _ = HealthState.objects.get_or_create(pk=1, defaults={"healthy": True, "changed_at": report.checked_at})
    if state.healthy == report.healthy:
        return
    changed = HealthState.objects.filter(pk=1, healthy=state.healthy).update(
        healthy=report.healthy, changed_at=report.checked_at, problems=report.problems
    )
    if not changed:
        return
    if report.healthy:
        logger.info("Backups are healthy again")
        notify(
            "Backups are healthy again",
            "Every covered database has a recent backup, and verification passes.",
            outcome="success",
        )
    else:
        logger.error("Backups are unhealthy: %s", " ".join(report.problems))
        notify("Backups are unhealthy", "\n".join(report.problems), outcome="failure")
