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


def test_demo_run_flags_default_to_the_run_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag left out is RunConfig's default, not a second literal in the CLI; a flag given
    is that key."""
    import simultrain.demo
    from simultrain.demo import DemoOptions
    from simultrain.shared.training.config import RunConfig

    seen: list[DemoOptions] = []
    monkeypatch.setattr(simultrain.demo, "run_demo", lambda options: seen.append(options))
    assert CliRunner().invoke(app, ["demo"]).exit_code == 0
    assert CliRunner().invoke(app, ["demo", "--window", "2", "-R", "0"]).exit_code == 0
    assert CliRunner().invoke(app, ["demo", "--window", "auto"]).exit_code == 0
    default, given, auto = seen
    assert default.run == RunConfig()
    assert (default.steps, default.edges) == (RunConfig().steps, RunConfig().edges)
    assert given.run == RunConfig(window=2, reconcile_every=None)
    assert auto.run == RunConfig(window="auto")
    bad = CliRunner().invoke(app, ["demo", "--window", "many"])
    assert bad.exit_code == 1 and "'window'" in bad.output and len(seen) == 3


def test_demo_eval_every_reaches_the_options_and_refuses_a_negative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import simultrain.demo
    from simultrain.demo import DemoOptions

    seen: list[DemoOptions] = []
    monkeypatch.setattr(simultrain.demo, "run_demo", lambda options: seen.append(options))
    assert CliRunner().invoke(app, ["demo", "--eval-every", "0"]).exit_code == 0
    assert seen[0].eval_every_s == 0.0
    result = CliRunner().invoke(app, ["demo", "--eval-every", "-1"])
    assert result.exit_code == 2 and not seen[1:]
