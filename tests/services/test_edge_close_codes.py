"""What the edge agent does after each close code (PROTOCOL.md §7, "What an edge does after
each close"): reconnect, stop, or stop for good with exit status 78 (services/edge/main.py)."""

from __future__ import annotations

import pytest

from simultrain.edge.agent import _raise_if_final, _worth_reconnecting
from simultrain.edge.main import EXIT_CONFIG
from simultrain.shared.errors import ModelMismatch, ProtocolVersionMismatch

URL = "ws://cloud.test/v1/stream"


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011, 1012, 1013, 4002])
def test_closes_a_new_session_can_fix_are_retried(code: int) -> None:
    _raise_if_final(code, "", URL)
    assert _worth_reconnecting(code, "")


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1002, ""), (1003, ""), (1007, ""), (1009, ""), (4001, ""), (1008, "token revoked")],
)
def test_protocol_errors_and_refused_tokens_are_not_retried(code: int, reason: str) -> None:
    _raise_if_final(code, reason, URL)
    assert not _worth_reconnecting(code, reason)


def test_a_superseded_session_is_retried() -> None:
    assert _worth_reconnecting(1008, "superseded by a newer session")


@pytest.mark.parametrize(
    ("code", "error"), [(4000, ProtocolVersionMismatch), (4003, ModelMismatch)]
)
def test_another_version_or_model_stops_the_agent_for_good(
    code: int, error: type[Exception]
) -> None:
    with pytest.raises(error, match="not retrying") as raised:
        _raise_if_final(code, "this cloud speaks simultrain.v3", URL)
    assert URL in str(raised.value) and EXIT_CONFIG == 78
