"""HTTP routes, one module per resource."""

from wearemo.api.routes import admin, health, ingest, subjects

__all__ = ["admin", "health", "ingest", "subjects"]
