"""Adjustments to the generated OpenAPI description."""


def spec_paths(endpoints, **kwargs):
    """Routes accept an optional trailing slash; the description shows the spec's paths,
    which have none."""
    return [(path.rstrip("/") or "/", regex, method, view) for path, regex, method, view in endpoints]


def closed_request_bodies(result, **kwargs):
    """Request bodies reject fields they do not know (a typo must not pass as a default)."""
    for name, component in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Request"):
            component["additionalProperties"] = False
    return result
