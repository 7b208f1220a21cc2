"""Coordinator errors and the HTTP status and code each maps to.

In the project's one tree (:mod:`simultrain.shared.errors`)::

    SimulTrainError
    ├── CoordinatorError          500 "internal_error"
    │   ├── UnknownEdge           404 "unknown_edge"
    │   ├── UnknownCloud          404 "unknown_cloud"
    │   ├── NoCloudAvailable      503 "no_cloud_available"
    │   └── ApiError              a 4xx the HTTP layer refuses with (credentials)
    └── StoreError (shared)       503 "store_unavailable"  (sqlite3 and psycopg errors,
                                                            translated)

Refused edge tokens (``simultrain.shared.auth.AuthError``) become 401 ``ApiError``s in
``credentials.py``. The HTTP body is always ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from simultrain.shared.errors import SimulTrainError, StoreError

__all__ = [
    "ApiError",
    "CoordinatorError",
    "NoCloudAvailable",
    "StoreError",
    "UnknownCloud",
    "UnknownEdge",
]


class CoordinatorError(SimulTrainError):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownEdge(CoordinatorError):
    status_code = 404
    code = "unknown_edge"

    def __init__(self, edge_id: str) -> None:
        super().__init__(f"no edge with id {edge_id!r} is registered")
        self.edge_id = edge_id


class UnknownCloud(CoordinatorError):
    status_code = 404
    code = "unknown_cloud"

    def __init__(self, cloud_id: str) -> None:
        super().__init__(f"no cloud with id {cloud_id!r} is registered")
        self.cloud_id = cloud_id


class NoCloudAvailable(CoordinatorError):
    status_code = 503
    code = "no_cloud_available"


class ApiError(CoordinatorError):
    """A refusal decided by the HTTP layer, with its own status, code and headers."""

    def __init__(
        self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.headers = headers
