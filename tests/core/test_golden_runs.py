"""The golden in-process runs replayed: the training core computes what it computed.

tests/core/golden_runs.py holds the cases and how a digest is taken; golden_runs.json the
digests recorded before the training core was restructured. Any difference is a change of
behaviour: bit for bit, the master's and every replica's weights, the versions, the
staleness record and the bytes on the wire.
"""

from __future__ import annotations

import json

import pytest

from tests.core.golden_runs import CASES, GOLDEN, run_case

RECORDED = json.loads(GOLDEN.read_text())


def test_every_case_is_recorded_with_its_configuration() -> None:
    assert sorted(RECORDED) == sorted(CASES)
    for name, case in CASES.items():
        assert RECORDED[name]["config"] == case, name


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_golden_run_computes_what_it_computed(name: str) -> None:
    assert run_case(CASES[name]) == RECORDED[name]["digest"]
