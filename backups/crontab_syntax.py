"""Cron expressions checked field by field, so that a mistake is named where it is: "hour 25 is
out of range 0-23", "unknown weekday 'frii'", not just "not a cron expression".

Plain Python without Django: the settings module builds its cron jobs with it before Django's
apps are ready.
"""

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (name, lowest, highest, names for the values from ``lowest`` on, what a name stands for)
FIELDS = [
    ("minute", 0, 59, None, None),
    ("hour", 0, 23, None, None),
    ("day of month", 1, 31, None, None),
    ("month", 1, 12, MONTHS, "month"),
    ("day of week", 0, 7, WEEKDAYS, "weekday"),  # 7 is Sunday too
]
FIELD_NAMES = "'minute hour day-of-month month day-of-week'"


def cron_problem(expression):
    """What is wrong with a five-field cron expression, in words; None when nothing is."""
    fields = str(expression).split()
    if len(fields) != len(FIELDS):
        return f"expected five fields {FIELD_NAMES}, e.g. '0 2 * * *'; got {len(fields)}"
    for text, field in zip(fields, FIELDS, strict=True):
        for item in text.split(","):
            problem = item_problem(item, *field)
            if problem:
                return problem
    return None


def item_problem(item, field, lowest, highest, names, kind):
    """One comma-separated part of a field: ``*``, ``N``, ``N-M``, each optionally ``/STEP``."""
    span, slash, step = item.partition("/")
    if slash:
        if not step.isdigit():
            return f"the step {step!r} in the {field} field {item!r} is not a whole number"
        if int(step) == 0:
            return f"the step in the {field} field {item!r} must be at least 1"
    if span == "*":
        return None
    if not span:
        return f"the {field} field has an empty part in {item!r}"
    bounds = span.split("-")
    if len(bounds) > 2:
        return f"{field} {span!r} is not a value or a range like 1-5"
    values = []
    for bound in bounds:
        value = number(bound, lowest, names)
        if value is None:
            if names and bound.isalpha():
                return f"unknown {kind} {bound!r} (use {lowest}-{highest} or {', '.join(names)})"
            return f"{field} {bound!r} is not a number"
        if not lowest <= value <= highest:
            return f"{field} {value} is out of range {lowest}-{highest}"
        values.append(value)
    if len(values) == 2 and values[0] > values[1]:
        return f"the {field} range {span} runs backwards; write it from the lower value to the higher"
    return None


def number(text, lowest, names):
    if text.isdigit():
        return int(text)
    if names and text.lower() in names:
        return lowest + names.index(text.lower())
    return None
