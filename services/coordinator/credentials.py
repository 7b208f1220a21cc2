"""Who may call what: the coordinator's credential checks and the tokens it issues.

When authentication is on (``settings.py``):

- registering an edge: the enrollment secret, header ``X-Enrollment-Secret`` (or body field
  ``enrollment_secret``): missing → 401, wrong → 403. The reply carries a token bound to
  the new edge id.
- edge heartbeat: ``Authorization: Bearer <edge token>``: missing, expired or forged → 401,
  a token of another edge → 403. The reply carries a fresh token.
- clouds (register, heartbeat) and ``DELETE /v1/edges/{id}``: ``Authorization: Bearer
  <admin token>``: missing → 401, wrong → 403.
- reads (``GET``) are open: they show ids, versions and health, never a credential.

A refusal is logged with the caller's address and the reason, never the credential itself.
The handlers call these checks after FastAPI has validated the request, so a malformed body
is a 422 whatever its credentials.
"""

from __future__ import annotations

import logging

from fastapi import Request

from simultrain.shared import auth

from .errors import ApiError
from .registry import Clock
from .schemas import EdgeRegistration
from .settings import CoordinatorSettings

__all__ = ["Credentials", "bearer"]

logger = logging.getLogger("simultrain.coordinator")


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _refuse(request: Request, status_code: int, code: str, message: str) -> ApiError:
    client = request.client.host if request.client else "?"
    logger.warning("refused %s %s from %s: %s", request.method, request.url.path, client, code)
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return ApiError(status_code, code, message, headers)


class Credentials:
    """The checks of one coordinator's settings, and its edge tokens."""

    def __init__(self, settings: CoordinatorSettings, clock: Clock) -> None:
        self.settings = settings
        self._clock = clock
        self._token_keys = settings.token_keys()

    def require_admin(self, request: Request, authorization: str | None) -> None:
        settings = self.settings
        if not settings.auth_enabled or settings.admin_token is None:
            return
        token = bearer(authorization)
        if token is None:
            raise _refuse(request, 401, "admin_token_required", "an admin bearer token is required")
        if not auth.constant_time_equals(token, settings.admin_token.get_secret_value()):
            raise _refuse(request, 403, "admin_token_invalid", "the admin token is not valid")

    def require_enrollment(
        self, request: Request, header_secret: str | None, body: EdgeRegistration | None
    ) -> None:
        settings = self.settings
        if not settings.auth_enabled or settings.enrollment_secret is None:
            return
        presented = header_secret
        if not presented and body is not None and body.enrollment_secret is not None:
            presented = body.enrollment_secret.get_secret_value()
        if not presented:
            raise _refuse(
                request,
                401,
                "enrollment_secret_required",
                "registering an edge requires the enrollment secret (X-Enrollment-Secret)",
            )
        if not auth.constant_time_equals(presented, settings.enrollment_secret.get_secret_value()):
            raise _refuse(
                request, 403, "enrollment_secret_invalid", "the enrollment secret is not valid"
            )

    def require_edge_token(self, request: Request, edge_id: str, authorization: str | None) -> None:
        if not self.settings.auth_enabled:
            return
        try:
            claims = auth.verify_token(bearer(authorization), self._token_keys, now=self._clock())
        except auth.AuthError as exc:
            raise _refuse(request, 401, exc.auth_code, str(exc)) from exc
        if claims.edge_id != edge_id:
            raise _refuse(
                request, 403, "token_wrong_edge", "the token is bound to a different edge"
            )

    def token_for(self, edge_id: str) -> tuple[str | None, int | None]:
        """A fresh token for ``edge_id`` and its expiry (Unix seconds); ``None`` without auth."""
        settings = self.settings
        if not settings.auth_enabled or settings.token_key is None:
            return None, None
        now = self._clock()
        key = settings.token_key.get_secret_value()
        token = auth.issue_token(edge_id, key, settings.token_ttl_s, now=now)
        return token, auth.verify_token(token, [key], now=now).expires_at
