"""The backup admin's template helpers: sizes and ages as the rest of the app writes them, and
line charts drawn on the server as inline SVG (no script, no CDN, readable offline and in dark
mode: their colours are the admin's CSS variables)."""

from django import template
from django.contrib.admin.templatetags.admin_list import pagination

from ..formatting import human_age, human_duration, human_size, local_time

register = template.Library()
register.filter("human_size", human_size)
register.filter("human_age", human_age)
register.filter("local_time", local_time)


@register.inclusion_tag("admin/backups/journal_pagination.html")
def journal_pagination(changelist):
    """Django's paginator, for the journal's lists (the audit log and the restore history)."""
    return pagination(changelist)


WIDTH, HEIGHT = 360, 120
# Room for the axis labels.
LEFT, RIGHT, TOP, BOTTOM = 64, 8, 10, 22


def chart_duration(seconds):
    """Durations on an axis: small backups take less than a second."""
    return f"{seconds:.1f} s" if seconds < 60 else human_duration(seconds)


FORMATS = {"size": human_size, "duration": chart_duration}


@register.inclusion_tag("admin/backups/line_chart.html")
def line_chart(history, measure, title):
    """``history``: overview HistoryPoints, oldest first; ``measure``: "size" or "duration"."""
    show = FORMATS[measure]
    points = [
        (point.created_at, point.size_bytes if measure == "size" else point.duration_seconds) for point in history
    ]
    points = [(moment, value) for moment, value in points if value is not None]
    context = {"title": title, "width": WIDTH, "height": HEIGHT, "points": [], "empty": not points}
    if not points:
        return context
    top = max(value for _, value in points) or 1
    first, last = points[0][0], points[-1][0]
    span = (last - first).total_seconds() or 1
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def position(moment, value):
        x = LEFT + (plot_width * (moment - first).total_seconds() / span if len(points) > 1 else plot_width / 2)
        return round(x, 1), round(TOP + plot_height * (1 - value / top), 1)

    drawn = [(*position(moment, value), f"{local_time(moment)}: {show(value)}") for moment, value in points]
    context.update(
        points=drawn,
        polyline=" ".join(f"{x},{y}" for x, y, _ in drawn),
        top_label=show(top),
        first_label=local_time(first)[:10],
        last_label=local_time(last)[:10],
        left=LEFT,
        right=WIDTH - RIGHT,
        top=TOP,
        bottom=HEIGHT - BOTTOM,
        summary=f"{len(drawn)} backups from {local_time(first)} to {local_time(last)}, the largest {show(top)}",
    )
    return context
