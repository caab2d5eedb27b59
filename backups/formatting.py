"""Small presentation helpers shared by the command line and the admin."""

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
    return f"{size} bytes"


def human_duration(seconds):
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
