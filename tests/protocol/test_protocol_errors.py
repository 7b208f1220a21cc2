"""The one exception tree: codes, close codes, reasons that fit a WebSocket close frame."""

from __future__ import annotations

import inspect

import pytest

from simultrain.shared import errors
from simultrain.shared.errors import (
    CLOSE_CODES,
    CloseCode,
    ErrorCode,
    MalformedFrame,
    ProtocolError,
    SimulTrainError,
    close_code_for,
    truncate_reason,
)


def exception_classes() -> list[type[BaseException]]:
    return [
        obj
        for name in errors.__all__
        if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, BaseException)
    ]


def test_every_error_derives_from_the_root_and_is_drawn_in_the_docstring() -> None:
    assert errors.__doc__ is not None
    for cls in exception_classes():
        assert issubclass(cls, SimulTrainError), cls
        assert cls.__name__ in errors.__doc__, f"{cls.__name__} missing from the tree drawing"


def test_each_code_has_one_exception_class_and_a_close_code() -> None:
    protocol_errors = [c for c in exception_classes() if issubclass(c, ProtocolError)]
    by_code = {}
    for cls in protocol_errors:
        if cls is not ProtocolError:
            assert cls.code not in by_code, f"{cls.__name__} reuses {cls.code}"
            by_code[cls.code] = cls
    assert set(by_code) == set(ErrorCode) == set(CLOSE_CODES)
    for code, cls in by_code.items():
        exc = cls("something went wrong")
        assert exc.code is code and exc.close_code == CLOSE_CODES[code]
        assert f"{code.value:<27}{int(CLOSE_CODES[code])}" in (errors.__doc__ or "")


def test_close_codes_are_sendable() -> None:
    # RFC 6455 section 7.4: 1005, 1006 and 1015 must never be sent in a close frame.
    for close in CLOSE_CODES.values():
        assert close in CloseCode
        assert 1000 <= close <= 1014 or 4000 <= close <= 4999
        assert close not in (1004, 1005, 1006, 1015)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("short", 123),
        ("x" * 200, 123),
        ("é" * 100, 123),
        ("€" * 100, 123),
        ("🙂" * 50, 123),
        ("ab🙂", 5),
        ("abc", 2),
        ("", 123),
    ],
)
def test_reasons_are_cut_to_whole_characters(text: str, limit: int) -> None:
    cut = truncate_reason(text, limit)
    assert len(cut.encode("utf-8")) <= limit
    assert text.startswith(cut.removesuffix("…"))
    if len(text.encode()) <= limit:
        assert cut == text


def test_protocol_error_keeps_the_full_message_and_a_short_reason() -> None:
    exc = MalformedFrame("expected int, got str " + "x" * 300, field="act.seq")
    assert str(exc).startswith("act.seq: expected int, got str")
    assert len(exc.reason.encode()) <= 123 and exc.reason.endswith("…")
    assert exc.field == "act.seq"
    assert repr(exc).startswith("MalformedFrame(code='malformed_frame'")


def test_unknown_codes_map_to_protocol_error() -> None:
    assert close_code_for("window_exceeded") == 1008
    assert close_code_for("from_the_future") == 1002


@pytest.mark.parametrize(
    "changes",
    [
        {"window": -1},
        {"max_frame_bytes": 1.5},
        {"max_tensor_rank": None},
        {"max_tensor_rank": 65},
        {"max_weight_tensors": True},
    ],
)
def test_limits_refuse_invalid_values(changes: dict[str, object]) -> None:
    from simultrain.shared.errors import ConfigError
    from simultrain.shared.protocol import Limits

    with pytest.raises(ConfigError):
        Limits(**changes)  # type: ignore[arg-type]


def test_limits_are_keyword_only_and_frozen() -> None:
    import dataclasses

    from simultrain.shared.protocol import Limits

    with pytest.raises(TypeError):
        Limits(1024)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Limits().window = 8  # type: ignore[misc]
    assert Limits(max_frame_bytes=None, window=None).max_frame_bytes is None
