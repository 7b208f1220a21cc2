"""The SimulTrain coordinator (docs/DESIGN.md §2, §8.2): registry of clouds and edges, run
configuration, reconciliation schedule, health and reassignment, state in SQLite.

Start it with ``python -m simultrain.coordinator`` (settings from ``SIMULTRAIN_COORDINATOR_*``
environment variables), or programmatically::

    from simultrain.coordinator import CoordinatorSettings, create_app, run, serve

    run(CoordinatorSettings(port=0))             # blocking; prints "LISTENING http://…"
    await serve(CoordinatorSettings(port=0))     # inside an event loop
    app = create_app(CoordinatorSettings(db_path=":memory:"))   # ASGI app, e.g. for tests
"""

from .app import create_app
from .registry import Coordinator
from .server import run, serve
from .settings import CoordinatorSettings, SettingsError, load_settings, settings_table
from .store import CoordinatorStore, InMemoryStore, SQLiteStore, open_store

__all__ = [
    "Coordinator",
    "CoordinatorSettings",
    "CoordinatorStore",
    "InMemoryStore",
    "SQLiteStore",
    "SettingsError",
    "create_app",
    "load_settings",
    "open_store",
    "run",
    "serve",
    "settings_table",
]
