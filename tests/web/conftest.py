"""The console in process: the API's app fixture (a real SQLite store, a manual clock, no loops)."""

from tests.api.conftest import App, app

__all__ = ["App", "app"]
