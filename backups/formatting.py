"""Small presentation helpers shared by the command line and the admin."""

from django.utils import timezone

UNITS = ("bytes", "KB", "MB", "GB", "TB")


def human_size(size):
    """1536 -> '1.5 KB'. Binary multiples, as ``du -h`` and ``ls -lh`` count."""
    if size is None:
        return "-"
    value = float(size)
    for unit in UNITS:
        if value < 1024 or unit == UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024


def local_time(moment):
    """A moment in the site's time zone (DJANGO_TIME_ZONE), with the zone's name."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "-"


def verification_label(backup):
    """How the backup's last verification went, in a few words."""
    if not backup.verification:
        return "never"
    outcome = "passed" if backup.verification.get("passed") else "FAILED"
    return f"{outcome} ({backup.verification.get('level')}), {local_time(backup.verified_at)}"


def human_duration(seconds):
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class TerminalProgress:
    """One status line on a terminal, redrawn in place: bytes so far, rate, elapsed time, and a
    bar with the percentage when the total is known. ``stream`` is a management command's
    ``stderr`` (an ``OutputWrapper``), written to without its error colour."""

    BAR_WIDTH = 24

    def __init__(self, stream, label):
        self.stream = stream
        self.label = label
        self.drawn = False

    def _write(self, text, ending):
        self.stream.write(text, style_func=str, ending=ending)
        self.stream.flush()

    def show(self, done, elapsed, total=None, detail=""):
        parts = [self.label]
        amount = human_size(done)
        if total:
            fraction = min(done / total, 1.0)
            filled = int(fraction * self.BAR_WIDTH)
            parts.append(f"[{'#' * filled}{'-' * (self.BAR_WIDTH - filled)}] {fraction:4.0%}")
            amount += f" of {human_size(total)}"
        parts.append(f"{amount} {detail}" if detail else amount)
        rate = done / elapsed if elapsed > 0 else 0
        parts.append(f"{human_size(rate)}/s")
        parts.append(human_duration(elapsed))
        # Carriage return and erase-to-end-of-line: the next state overwrites this one.
        self._write("\r" + "  ".join(parts) + "\x1b[K", ending="")
        self.drawn = True

    def close(self):
        """Ends the line, so that what follows starts on a fresh one."""
        if self.drawn:
            self._write("", ending="\n")


def human_age(moment, now=None):
    """How long ago, in the largest unit that fits: 'just now', '5 min ago', '2 h ago', '3 d ago'."""
    if moment is None:
        return "-"
    seconds = ((now or timezone.now()) - moment).total_seconds()
    if seconds < 60:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"


def first_line(exc, default=None):
    """The first line of what an error says, for a message; ``default`` (else its type's name)
    when it says nothing."""
    said = str(exc).strip()
    return said.splitlines()[0] if said else default or type(exc).__name__
