"""HTTP API stage: ``create_app()`` and its routes.

Example
-------
>>> from wearemo.api import create_app
>>> create_app().title
'wearemo'
"""

from wearemo.api.app import create_app

__all__ = ["create_app"]
