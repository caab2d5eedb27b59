"""Adjustments to the generated OpenAPI description."""


def spec_paths(endpoints, **kwargs):
    """Routes accept an optional trailing slash; the description shows the spec's paths,
    which have none."""
    return [(path.rstrip("/") or "/", regex, method, view) for path, regex, method, view in endpoints]
