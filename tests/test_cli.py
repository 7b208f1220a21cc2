"""``simultrain demo`` refuses a configuration it cannot run before it starts any process."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from simultrain.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "unknown model id 'nope'"),
        (["--model", "imu-thin", "--dataset", "mnist"], "model imu-thin takes [6, 128]"),
        (["--mode", "nope"], "nope"),
        # 400 edges split IMU subject 1 (433 windows) into 50 pieces of 8 or 9 windows.
        (["--edges", "400"], "shard 0 of 400 (groups) has 9 training samples"),
        (["--partition", "nope"], "'partition': 'nope' is not one of"),
        (["--alpha", "0.5"], "compensation 'delay-beta1' has no 'forecast' part"),
        (["--compensation", "forecast+bogus"], "unknown compensation 'bogus'"),
        (["--partition", "label-skew", "--edges", "100"], "shard 0 of 100 (label-skew) has 2"),
    ],
)
def test_demo_refuses_what_it_cannot_run(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["demo", "--steps", "1", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "LISTENING" not in result.output  # nothing was started
