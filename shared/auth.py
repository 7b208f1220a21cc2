"""Edge tokens and secret comparison (SECURITY.md, "Tokens: scope and lifetime").

The coordinator enrolls an edge (enrollment secret) and issues it a **token**: an HS256 JSON
Web Token (RFC 7519) bound to that edge id, which the cloud checks during the WebSocket
handshake and the coordinator checks on edge heartbeats.

Claims: ``sub`` = edge id, ``iat`` and ``exp`` (seconds since the epoch, integers),
``iss`` = :data:`ISSUER`. The JOSE header carries ``kid``, the key id (RFC 7515 §4.1.4),
derived from the key itself (:func:`key_id`), so configuration holds only keys.

Key rotation: the issuer signs with the newest key; verifiers accept a list — the newest key
plus the previous ones — and pick the key named by ``kid``. Drop an old key from the list once
every token it signed has expired (one token TTL after the switch). Tokens are refreshed on
every edge heartbeat, so live edges move to the new key on their own.

Pure: no I/O and no logging; the clock is read only when ``now`` is not given. Error
messages never contain a token or a key.

Exceptions, in the tree of :mod:`simultrain.shared.errors`::

    Unauthorized (ProtocolError, code "unauthorized", close code 1008)
    └── AuthError             a refused credential; ``auth_code`` says which case
        ├── TokenMissing      "token_missing": no token presented
        ├── TokenExpired      "token_expired": valid signature, ``exp`` has passed
        └── TokenInvalid      "token_invalid": malformed, forged, unknown ``kid``, bad claims

So the cloud closes a refused WebSocket handshake with ``exc.close_code`` (1008) and
``exc.reason``, and an HTTP service answers 401 with ``exc.auth_code``. A key that is too
short or a nonsensical argument raises :class:`~simultrain.shared.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import jwt

from simultrain.shared.errors import ConfigError, Unauthorized

__all__ = [
    "ALGORITHM",
    "ISSUER",
    "MIN_KEY_BYTES",
    "AuthError",
    "TokenClaims",
    "TokenExpired",
    "TokenInvalid",
    "TokenMissing",
    "constant_time_equals",
    "issue_token",
    "key_id",
    "verify_token",
]

ALGORITHM = "HS256"
ISSUER = "simultrain-coordinator"
# RFC 7518 §3.2: an HS256 key MUST be at least as long as the hash output (256 bits).
MIN_KEY_BYTES = 32

Key = bytes | str


class AuthError(Unauthorized):
    """A credential was refused. ``auth_code`` is stable and safe to show to the client."""

    auth_code: ClassVar[str] = "auth_error"


class TokenMissing(AuthError):
    auth_code = "token_missing"


class TokenExpired(AuthError):
    auth_code = "token_expired"


class TokenInvalid(AuthError):
    auth_code = "token_invalid"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says: the edge it is bound to and its lifetime."""

    edge_id: str
    issued_at: int
    expires_at: int
    key_id: str


def _key_bytes(key: Key) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        # Checked here so PyJWT never signs with a weak key (it would only warn).
        raise ConfigError(f"token key must be at least {MIN_KEY_BYTES} bytes, got {len(raw)}")
    return raw


def key_id(key: Key) -> str:
    """The ``kid`` of a key: 16 hex digits of a domain-separated SHA-256 of the key.

    It names the key without revealing it (keys are at least 256 bits, so the digest
    cannot be inverted) and lets a verifier holding several keys pick the right one.
    """
    return hashlib.sha256(b"simultrain-token-kid\x00" + _key_bytes(key)).hexdigest()[:16]


def issue_token(edge_id: str, key: Key, ttl_s: float, now: float | None = None) -> str:
    """Sign a token bound to ``edge_id`` that expires ``ttl_s`` seconds after ``now``."""
    if not isinstance(edge_id, str) or not edge_id:
        raise ConfigError("edge_id must be a non-empty string")
    if not ttl_s >= 1:  # also refuses NaN
        raise ConfigError(f"ttl_s must be at least 1 second, got {ttl_s!r}")
    raw = _key_bytes(key)
    issued_at = int(time.time() if now is None else now)
    payload = {"sub": edge_id, "iat": issued_at, "exp": issued_at + int(ttl_s), "iss": ISSUER}
    return jwt.encode(payload, raw, algorithm=ALGORITHM, headers={"kid": key_id(raw)})


def verify_token(
    token: str | None,
    keys: Sequence[Key],
    now: float | None = None,
    *,
    leeway_s: float = 0.0,
) -> TokenClaims:
    """Check a token's signature, issuer and lifetime against the accepted ``keys``.

    ``keys`` holds every key still accepted (newest first by convention; order does not
    matter, ``kid`` selects). ``leeway_s`` tolerates clock skew between the issuer and the
    verifier. Raises :class:`TokenMissing`, :class:`TokenExpired` or :class:`TokenInvalid`.
    """
    if isinstance(keys, str | bytes):
        raise TypeError("keys must be a sequence of keys, not a single key")
    by_kid = {key_id(key): _key_bytes(key) for key in keys}
    if not by_kid:
        raise ConfigError("at least one accepted key is required")
    if not token:
        raise TokenMissing("no token presented")

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid("token is not a well-formed JWT") from exc
    if header.get("alg") != ALGORITHM:
        raise TokenInvalid(f"token algorithm must be {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in by_kid:
        raise TokenInvalid("token was signed with a key that is not accepted (unknown kid)")
    key = by_kid[kid]

    try:
        # Lifetime is checked below against the injectable clock, not PyJWT's.
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "require": ["sub", "iat", "exp", "iss"],
            },
        )
    except jwt.InvalidSignatureError as exc:
        raise TokenInvalid("token signature does not match") from exc
    except jwt.PyJWTError as exc:
        raise TokenInvalid(f"token claims are invalid: {type(exc).__name__}") from exc

    subject, issued_at, expires_at = payload["sub"], payload["iat"], payload["exp"]
    if not isinstance(subject, str) or not subject:
        raise TokenInvalid("token subject must be a non-empty edge id")
    for value in (issued_at, expires_at):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TokenInvalid("token iat and exp must be integers")

    current = time.time() if now is None else now
    if current >= expires_at + leeway_s:
        raise TokenExpired("token has expired")
    if issued_at > current + leeway_s:
        raise TokenInvalid("token was issued in the future")
    return TokenClaims(edge_id=subject, issued_at=issued_at, expires_at=expires_at, key_id=kid)


def constant_time_equals(presented: str | bytes | None, expected: str | bytes) -> bool:
    """Compare a presented secret with the expected one without leaking where they differ."""
    if presented is None:
        return False
    a = presented.encode("utf-8") if isinstance(presented, str) else presented
    b = expected.encode("utf-8") if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)
