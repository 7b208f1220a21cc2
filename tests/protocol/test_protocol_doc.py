"""PROTOCOL.md stays true: the worked example's bytes, the message fields, the error table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from simultrain.shared import errors
from simultrain.shared.protocol import FRAME_TYPES, Act, WireTensor, encode_frame
from simultrain.shared.protocol.codec import frame_fields

DOC = Path(__file__).resolve().parents[2] / "PROTOCOL.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def between(doc: str, marker: str) -> str:
    match = re.search(rf"<!-- {marker}:begin -->(.*?)<!-- {marker}:end -->", doc, re.S)
    assert match, f"marker {marker} missing from PROTOCOL.md"
    return match.group(1)


def test_worked_example_hex_is_what_the_encoder_writes(doc: str) -> None:
    # The frame of PROTOCOL.md section 8, built exactly as the document shows.
    frame = Act(
        seq=7,
        edge_version=3,
        activations=WireTensor(np.array([[0.5, -1.0], [0.25, 2.0]], dtype=np.float32)),
        labels=WireTensor(np.array([1, 0], dtype=np.int64)),
    )
    data = encode_frame(frame)
    documented = re.sub(r"[^0-9a-f]", "", between(doc, "example-act-hex"))
    assert documented == data.hex()
    assert f"# {len(data)} bytes" in doc and f"The {len(data)} bytes, in hex" in doc


def test_every_message_documents_exactly_its_wire_fields(doc: str) -> None:
    sections = re.split(r"^### `(\w+)`", doc, flags=re.M)
    documented = {
        name: re.findall(r"^\| `(\w+)` \|", _first_table(body), flags=re.M)
        for name, body in zip(sections[1::2], sections[2::2], strict=True)
    }
    assert set(documented) == set(FRAME_TYPES)
    for name, cls in FRAME_TYPES.items():
        assert tuple(documented[name]) == frame_fields(cls), name


def _first_table(section: str) -> str:
    """The field table that opens a message's section (later tables list other things)."""
    lines = section.split("\n## ")[0].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_close_code_table_matches_the_code(doc: str) -> None:
    rows = re.findall(
        r"^\| `(\w+)` \| (\d+) \| .* \| `(\w+)` \|$", between(doc, "close-codes"), re.M
    )
    table = {code: (int(close), exception) for code, close, exception in rows}
    expected = {
        code.value: (int(errors.CLOSE_CODES[code]), _exception_for(code).__name__)
        for code in errors.ErrorCode
    }
    assert table == expected


def _exception_for(code: errors.ErrorCode) -> type[errors.ProtocolError]:
    # The tree of errors.py itself: other modules (shared/auth.py) refine some classes.
    [cls] = [c for c in _protocol_errors() if c.code is code and c.__module__ == errors.__name__]
    return cls


def _protocol_errors() -> list[type[errors.ProtocolError]]:
    found, todo = [], [errors.ProtocolError]
    while todo:
        cls = todo.pop()
        found.extend(cls.__subclasses__())
        todo.extend(cls.__subclasses__())
    return found


CLOSE_CODES_DOC = DOC.parent / "docs" / "CONFIGURATION.md"  # "Close codes in an edge's log"


def _edge_log_close_codes() -> dict[int, set[str]]:
    """docs/CONFIGURATION.md's table: close code → the error codes that close with it."""
    table = between(CLOSE_CODES_DOC.read_text(encoding="utf-8"), "close-codes")
    rows: dict[int, set[str]] = {}
    for codes, errors_cell in re.findall(r"^\| ([\d, ]+) \| (.*?) \|", table, re.M):
        for close in codes.split(","):
            # "`internal_error` (1011)" in a row of several close codes names the one it is.
            rows[int(close)] = {
                name
                for name, only in re.findall(r"`(\w+)`(?: \((\d+)\))?", errors_cell)
                if not only or int(only) == int(close)
            }
    return rows


def test_the_edge_log_table_and_protocol_agree_on_every_close_code(doc: str) -> None:
    in_log = _edge_log_close_codes()
    # Every error code of PROTOCOL.md §7 sits in that table's row of its close code, and no other.
    documented = {
        code: int(close)
        for code, close in re.findall(r"^\| `(\w+)` \| (\d+) \|", between(doc, "close-codes"), re.M)
    }
    assert documented == {c.value: int(errors.CLOSE_CODES[c]) for c in errors.ErrorCode}
    in_table = {name: close for close, names in in_log.items() for name in names}
    assert in_table == documented
    # The close codes an edge may see are the same in both tables of what the edge does.
    actions = between(doc, "close-actions")
    protocol_closes = {
        int(close)
        for cell in re.findall(r"^\| ([\d, ]+) \|", actions, re.M)
        for close in cell.split(",")
    }
    assert set(in_log) == protocol_closes
    # And the prose: "`model_mismatch` (close code 4003" and the like, wherever it appears.
    for text in (CLOSE_CODES_DOC.read_text(encoding="utf-8"), doc):
        for name, close in re.findall(r"`(\w+)` \(close code (\d+)", text):
            assert documented[name] == int(close), (name, close)


def test_the_capability_table_is_the_registry(doc: str) -> None:
    from simultrain.shared.protocol import CAPABILITIES

    rows = re.findall(r"^\| `([\w-]+)` \|", between(doc, "capabilities"), re.M)
    assert sorted(rows) == sorted(CAPABILITIES)


def test_the_documented_version_is_the_code_s(doc: str) -> None:
    from simultrain.shared.protocol import PROTOCOL_VERSION, SUPPORTED_VERSIONS

    assert doc.startswith(f"# SimulTrain wire protocol, version {PROTOCOL_VERSION}\n")
    assert f"`simultrain.v{PROTOCOL_VERSION}`" in doc and SUPPORTED_VERSIONS == (2,)
    assert f'{{ "v": {PROTOCOL_VERSION}, "t": "<type>"' in doc
