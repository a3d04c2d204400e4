"""HTTP routes, one module per resource."""

from wearemo.api.routes import health, ingest, subjects

__all__ = ["health", "ingest", "subjects"]
