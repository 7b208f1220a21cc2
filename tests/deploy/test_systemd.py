"""deploy/systemd: the edge agent's unit and its environment file (docs/DEPLOY.md §4, §5).

``systemd-analyze verify`` loads the unit as systemd would, with its ExecStart pointed at this
environment's Python (the install location, /opt/simultrain, does not exist here). verify
exits 0 on most mistakes — an unknown key or a bad value is "ignoring", not an error — so any
output at all counts as a rejection here. ``systemd-analyze security --offline`` scores the
hardening; the unit must stay in the "OK" band.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from deploy_checks import (
    REPO_ROOT,
    env_file_values,
    env_problems,
    module_of_command,
    module_problems,
    run_tool,
    unit_settings,
)

UNIT = REPO_ROOT / "deploy" / "systemd" / "simultrain-edge.service"
ENV_EXAMPLE = REPO_ROOT / "deploy" / "systemd" / "simultrain-edge.env.example"
INSTALLED_PYTHON = "/opt/simultrain/venv/bin/python"
# systemd-analyze security: exposure ×10 (0 = fully locked down, 100 = nothing); 20 is "OK".
MAX_EXPOSURE = 20


def _local_unit(source: Path, directory: Path) -> Path:
    """The unit with ExecStart pointed at this Python, under its own name (verify needs it)."""
    text = source.read_text("utf-8")
    assert f"ExecStart={INSTALLED_PYTHON} " in text
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / UNIT.name
    target.write_text(
        text.replace(f"ExecStart={INSTALLED_PYTHON} ", f"ExecStart={sys.executable} ")
    )
    return target


def _verify_problems(tool: Callable[[str], str], unit: Path) -> list[str]:
    result = run_tool([tool("systemd-analyze"), "verify", "--man=no", str(unit)], timeout_s=60)
    output = (result.stdout + result.stderr).strip()
    return [output or f"exit {result.returncode}"] if result.returncode or output else []


def test_systemd_accepts_the_unit(tool: Callable[[str], str], tmp_path: Path) -> None:
    assert _verify_problems(tool, _local_unit(UNIT, tmp_path)) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Type=notify", "Type=notfiy"),
        ("WatchdogSec=60", "WatchdgSec=60"),
        ("\n[Service]\n", "\n[Servce]\n"),
        ("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "RestrictAddressFamilies=AF_UNIKS"),
    ],
    ids=["bad-value", "unknown-key", "unknown-section", "bad-family"],
)
def test_verify_rejects_a_broken_unit(
    tool: Callable[[str], str], broken_copy: Callable[..., Path], tmp_path: Path, old: str, new: str
) -> None:
    broken = broken_copy("deploy/systemd/simultrain-edge.service", old, new, name="broken.service")
    assert _verify_problems(tool, _local_unit(broken, tmp_path / "unit"))


def test_verify_rejects_a_missing_executable(tool: Callable[[str], str], tmp_path: Path) -> None:
    text = UNIT.read_text().replace(INSTALLED_PYTHON, str(tmp_path / "no-such-python"))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    assert _verify_problems(tool, unit)


def _exposure_ok(tool: Callable[[str], str], unit: Path) -> bool:
    command = [
        tool("systemd-analyze"), "security", "--offline=yes", f"--threshold={MAX_EXPOSURE}",
        "--no-pager", str(unit),
    ]  # fmt: skip
    return run_tool(command, timeout_s=60).returncode == 0


def test_unit_is_hardened(tool: Callable[[str], str], tmp_path: Path) -> None:
    assert _exposure_ok(tool, _local_unit(UNIT, tmp_path))


def test_security_score_catches_lost_hardening(tool: Callable[[str], str], tmp_path: Path) -> None:
    text = UNIT.read_text()
    for line in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "CapabilityBoundingSet=",
        "PrivateUsers=yes",
        "SystemCallFilter=@system-service",
    ):
        assert f"\n{line}\n" in text, line
        text = text.replace(f"\n{line}\n", "\n")  # fmt: skip
    weakened = tmp_path / "weak" / UNIT.name
    weakened.parent.mkdir()
    weakened.write_text(text)
    assert not _exposure_ok(tool, _local_unit(weakened, tmp_path / "unit"))


def test_unit_runs_the_agent_under_a_watchdog_with_backoff() -> None:
    settings = unit_settings(UNIT.read_text())
    single = {key: values[-1] for key, values in settings.items()}
    assert single["Type"] == "notify"
    assert int(single["WatchdogSec"]) >= 10
    assert single["Restart"] == "on-failure" and int(single["RestartSec"]) >= 5
    assert int(single["StartLimitBurst"]) >= 1 and int(single["StartLimitIntervalSec"]) > 0
    assert single["EnvironmentFile"] == "/etc/simultrain/edge.env"
    assert single["DynamicUser"] == "yes" and single["StateDirectory"]
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert single[hardening] == "yes", hardening
    assert single["ProtectSystem"] == "strict" and single["CapabilityBoundingSet"] == ""
    command = single["ExecStart"].split()
    assert command[0] == INSTALLED_PYTHON
    assert module_problems(module_of_command(command), "ExecStart") == []
    assert module_of_command(command) == "simultrain.edge"
    # The agent pings WATCHDOG=1 only when told to; the unit tells it.
    environment = dict(value.split("=", 1) for value in settings["Environment"])
    assert environment["SIMULTRAIN_EDGE_WATCHDOG"] == "true"
    assert (
        env_problems(environment, module="simultrain.edge", where="unit", validate_values=False)
        == []
    )


def test_env_example_configures_the_agent() -> None:
    values = env_file_values(ENV_EXAMPLE.read_text())
    assert {"SIMULTRAIN_EDGE_COORDINATOR_URL", "SIMULTRAIN_EDGE_SHARD_INDEX",
            "SIMULTRAIN_EDGE_SHARD_COUNT"} <= set(values)  # fmt: skip
    assert env_problems(values, module="simultrain.edge", where=ENV_EXAMPLE.name) == []
    # Commented-out variables are settings too: uncommenting one must not break the agent.
    commented = {
        line[1:].split("=", 1)[0]: line[1:].split("=", 1)[1]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.startswith("#SIMULTRAIN_")
    }
    assert commented
    assert (
        env_problems(commented, module="simultrain.edge", where="commented", validate_values=False)
        == []
    )


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("SIMULTRAIN_EDGE_SHARD_COUNT=2", "SIMULTRAIN_EDGE_SHARDS=2", "SIMULTRAIN_EDGE_SHARDS"),
        ("SIMULTRAIN_EDGE_SHARD_COUNT=2", "SIMULTRAIN_EDGE_SHARD_COUNT=0", "SHARD_COUNT"),
    ],
    ids=["unknown-variable", "invalid-value"],
)
def test_env_example_checks_reject_a_broken_copy(
    broken_copy: Callable[..., Path], old: str, new: str, complaint: str
) -> None:
    broken = broken_copy("deploy/systemd/simultrain-edge.env.example", old, new)
    problems = env_problems(
        env_file_values(broken.read_text()), module="simultrain.edge", where="x"
    )
    assert any(complaint in p for p in problems), problems
