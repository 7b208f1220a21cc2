"""simultrain.shared.auth: edge tokens (issue, verify, expiry, forgery, rotation) and secrets."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from simultrain.shared.auth import (
    ISSUER,
    MIN_KEY_BYTES,
    AuthError,
    TokenExpired,
    TokenInvalid,
    TokenMissing,
    constant_time_equals,
    issue_token,
    key_id,
    verify_token,
)
from simultrain.shared.errors import ConfigError, SimulTrainError, Unauthorized

KEY = "a" * 32
OLD_KEY = b"\x01" * 48
NOW = 1_800_000_000.0


def _segments(token: str) -> list[str]:
    return token.split(".")


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_issue_and_verify() -> None:
    token = issue_token("edge-7", KEY, ttl_s=60, now=NOW)
    claims = verify_token(token, [KEY], now=NOW + 1)
    assert claims.edge_id == "edge-7"
    assert claims.issued_at == int(NOW)
    assert claims.expires_at == int(NOW) + 60
    assert claims.key_id == key_id(KEY)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "kid": key_id(KEY), "typ": "JWT"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload == {"sub": "edge-7", "iat": int(NOW), "exp": int(NOW) + 60, "iss": ISSUER}


def test_default_clock_is_now() -> None:
    claims = verify_token(issue_token("edge-1", KEY, ttl_s=60), [KEY])
    assert claims.edge_id == "edge-1"


def test_expiry_boundary_and_leeway() -> None:
    token = issue_token("edge-1", KEY, ttl_s=60, now=NOW)
    verify_token(token, [KEY], now=NOW + 59.9)
    with pytest.raises(TokenExpired):
        verify_token(token, [KEY], now=NOW + 60)
    verify_token(token, [KEY], now=NOW + 60, leeway_s=5)
    with pytest.raises(TokenExpired):
        verify_token(token, [KEY], now=NOW + 66, leeway_s=5)


def test_issued_in_the_future_is_refused() -> None:
    token = issue_token("edge-1", KEY, ttl_s=60, now=NOW + 100)
    with pytest.raises(TokenInvalid, match="future"):
        verify_token(token, [KEY], now=NOW)


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_token(missing: str | None) -> None:
    with pytest.raises(TokenMissing):
        verify_token(missing, [KEY], now=NOW)


@pytest.mark.parametrize("garbage", ["x", "a.b.c", "....", "Bearer abc", "é.é.é"])
def test_garbage_token(garbage: str) -> None:
    with pytest.raises(TokenInvalid):
        verify_token(garbage, [KEY], now=NOW)


def test_forged_signature_wrong_key() -> None:
    other = "b" * 32
    forged = jwt.encode(
        {"sub": "edge-1", "iat": int(NOW), "exp": int(NOW) + 60, "iss": ISSUER},
        other,
        algorithm="HS256",
        headers={"kid": key_id(KEY)},  # claims to be signed by the accepted key
    )
    with pytest.raises(TokenInvalid, match="signature"):
        verify_token(forged, [KEY], now=NOW)


def test_tampered_payload() -> None:
    header, _, signature = _segments(issue_token("edge-1", KEY, ttl_s=60, now=NOW))
    payload = _b64({"sub": "edge-2", "iat": int(NOW), "exp": int(NOW) + 60, "iss": ISSUER})
    with pytest.raises(TokenInvalid):
        verify_token(f"{header}.{payload}.{signature}", [KEY], now=NOW)


def test_alg_none_refused() -> None:
    header = _b64({"alg": "none", "typ": "JWT", "kid": key_id(KEY)})
    payload = _b64({"sub": "edge-1", "iat": int(NOW), "exp": int(NOW) + 60, "iss": ISSUER})
    with pytest.raises(TokenInvalid, match="algorithm"):
        verify_token(f"{header}.{payload}.", [KEY], now=NOW)


def test_unknown_or_missing_kid() -> None:
    token = jwt.encode(
        {"sub": "edge-1", "iat": int(NOW), "exp": int(NOW) + 60, "iss": ISSUER},
        KEY,
        algorithm="HS256",
    )
    with pytest.raises(TokenInvalid, match="kid"):
        verify_token(token, [KEY], now=NOW)


@pytest.mark.parametrize(
    "claims",
    [
        {"iat": int(NOW), "exp": int(NOW) + 60, "iss": ISSUER},  # no sub
        {"sub": "edge-1", "iat": int(NOW), "iss": ISSUER},  # no exp
        {"sub": "edge-1", "exp": int(NOW) + 60, "iss": ISSUER},  # no iat
        {"sub": "edge-1", "iat": int(NOW), "exp": int(NOW) + 60},  # no iss
        {"sub": "edge-1", "iat": int(NOW), "exp": int(NOW) + 60, "iss": "someone-else"},
        {"sub": "", "iat": int(NOW), "exp": int(NOW) + 60, "iss": ISSUER},
        {"sub": "edge-1", "iat": int(NOW), "exp": "later", "iss": ISSUER},
        {"sub": "edge-1", "iat": True, "exp": int(NOW) + 60, "iss": ISSUER},
    ],
)
def test_bad_claims_with_valid_signature(claims: dict[str, object]) -> None:
    token = jwt.encode(claims, KEY, algorithm="HS256", headers={"kid": key_id(KEY)})
    with pytest.raises(TokenInvalid):
        verify_token(token, [KEY], now=NOW)


def test_key_rotation() -> None:
    old_token = issue_token("edge-1", OLD_KEY, ttl_s=60, now=NOW)
    new_token = issue_token("edge-1", KEY, ttl_s=60, now=NOW)
    assert key_id(OLD_KEY) != key_id(KEY)
    # during rotation the verifier accepts both, whatever the order
    for keys in ([KEY, OLD_KEY], [OLD_KEY, KEY]):
        assert verify_token(old_token, keys, now=NOW).key_id == key_id(OLD_KEY)
        assert verify_token(new_token, keys, now=NOW).key_id == key_id(KEY)
    # after the old key is dropped, its tokens are refused
    with pytest.raises(TokenInvalid):
        verify_token(old_token, [KEY], now=NOW)


def test_errors_are_auth_errors_with_codes_and_no_secrets() -> None:
    token = issue_token("edge-1", KEY, ttl_s=60, now=NOW)
    cases = [
        (None, TokenMissing, "token_missing"),
        (token, TokenExpired, "token_expired"),
        (token + "x", TokenInvalid, "token_invalid"),
    ]
    for presented, error, code in cases:
        with pytest.raises(AuthError) as info:
            verify_token(presented, [KEY], now=NOW + 3600)
        assert isinstance(info.value, error) and isinstance(info.value, SimulTrainError)
        assert info.value.auth_code == code
        assert isinstance(info.value, Unauthorized) and info.value.close_code == 1008
        assert KEY not in str(info.value) and token not in str(info.value)


def test_weak_or_misused_keys_are_configuration_errors() -> None:
    with pytest.raises(ConfigError, match=str(MIN_KEY_BYTES)):
        issue_token("edge-1", "short", ttl_s=60, now=NOW)
    with pytest.raises(ConfigError):
        verify_token("x.y.z", ["short"], now=NOW)
    with pytest.raises(ConfigError):
        verify_token("x.y.z", [], now=NOW)
    with pytest.raises(TypeError):
        verify_token("x.y.z", KEY, now=NOW)
    with pytest.raises(ConfigError):
        issue_token("", KEY, ttl_s=60)
    with pytest.raises(ConfigError):
        issue_token("edge-1", KEY, ttl_s=0)
    with pytest.raises(ConfigError):
        issue_token("edge-1", KEY, ttl_s=float("nan"))


def test_str_and_bytes_keys_are_the_same_key() -> None:
    token = issue_token("edge-1", KEY, ttl_s=60, now=NOW)
    assert verify_token(token, [KEY.encode()], now=NOW).edge_id == "edge-1"


def test_constant_time_equals() -> None:
    assert constant_time_equals("secret", "secret")
    assert constant_time_equals(b"secret", "secret")
    assert not constant_time_equals("secret", "secreT")
    assert not constant_time_equals("", "secret")
    assert not constant_time_equals(None, "secret")
    assert constant_time_equals("ünï", "ünï")
