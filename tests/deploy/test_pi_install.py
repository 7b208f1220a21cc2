"""deploy/pi/install-edge.sh, the Raspberry Pi installer (docs/DEPLOY.md §4, §5).

A real install needs a Pi (aarch64, root, systemd as PID 1, the network for torch): here the
script is checked by ``bash -n`` and shellcheck, and its ``--dry-run`` is run end to end — the
steps it prints, the configuration it would write (which must build valid edge settings) —
with the install directories pointed into ``tmp_path`` so that nothing could land outside it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from deploy_checks import REPO_ROOT, env_problems, tool_problems

SCRIPT = REPO_ROOT / "deploy" / "pi" / "install-edge.sh"
SECRET = "s3cret-enrollment-value-never-printed"


def _install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def _on_aarch64(tmp_path: Path) -> dict[str, str]:
    """The environment of a Raspberry Pi as far as the installer asks: `uname -m` says aarch64."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    uname = bin_dir / "uname"
    uname.write_text(
        '#!/bin/sh\n[ "$1" = -m ] && { echo aarch64; exit 0; }\nexec /bin/uname "$@"\n'
    )
    uname.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    secret = tmp_path / "enrollment_secret"
    secret.write_text(SECRET + "\n")
    return {
        "secret": secret,
        "prefix": tmp_path / "opt",
        "config": tmp_path / "etc",
        "units": tmp_path / "units",
    }


def _args(dirs: dict[str, Path], *extra: str) -> list[str]:
    return [
        "--coordinator-url", "https://coordinator.simultrain.example.com",
        "--enrollment-secret-file", str(dirs["secret"]),
        "--shard-index", "1", "--shard-count", "2", "--name", "pi-test", "--steps", "500",
        "--prefix", str(dirs["prefix"]), "--config-dir", str(dirs["config"]),
        "--unit-dir", str(dirs["units"]), *extra,
    ]  # fmt: skip


def test_script_parses(tool: Callable[[str], str]) -> None:
    assert tool_problems([tool("bash"), "-n", str(SCRIPT)], where=SCRIPT.name) == []


def test_shellcheck_accepts_the_script(tool: Callable[[str], str]) -> None:
    assert tool_problems([tool("shellcheck"), str(SCRIPT)], where=SCRIPT.name) == []


def test_bash_rejects_a_syntax_error(
    tool: Callable[[str], str], broken_copy: Callable[..., Path]
) -> None:
    broken = broken_copy("deploy/pi/install-edge.sh", "    esac\ndone", "    esac\n")
    assert tool_problems([tool("bash"), "-n", str(broken)], where="broken")


def test_shellcheck_rejects_an_unquoted_path(
    tool: Callable[[str], str], broken_copy: Callable[..., Path]
) -> None:
    broken = broken_copy(
        "deploy/pi/install-edge.sh",
        'run install -d -m 0755 "$prefix"',
        "run install -d -m 0755 $prefix",
    )
    problems = tool_problems([tool("shellcheck"), str(broken)], where="broken")
    assert problems and "SC2086" in problems[0]


def test_dry_run_prints_every_step_and_changes_nothing(dirs: dict[str, Path]) -> None:
    result = _install(*_args(dirs, "--dry-run"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    venv = dirs["prefix"] / "venv"
    expected_steps = [
        f"-m venv {venv}",
        "-m pip install",
        "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0",
        f"-m pip install {REPO_ROOT}\n",  # the agent with its core dependencies only
        f"-m pip install --no-deps -r {REPO_ROOT}/docker/dataset-packages.txt",
        f"+ write {dirs['config']}/edge.env (mode 0644)",
        f"+ write {dirs['config']}/enrollment_secret (mode 0600)",
        f"+ write {dirs['units']}/simultrain-edge.service (mode 0644)",
        "+ systemctl daemon-reload",
        "+ systemctl enable simultrain-edge.service",
        "+ systemctl restart simultrain-edge.service",
        "(dry run: nothing was changed)",
    ]
    for step in expected_steps:
        assert step in out, step
    assert SECRET not in out + result.stderr
    for directory in ("prefix", "config", "units"):
        assert not dirs[directory].exists(), directory
    # The unit it installs runs this venv's Python and reads this configuration.
    assert f"|   ExecStart={venv}/bin/python -m simultrain.edge" in out
    assert f"|   EnvironmentFile={dirs['config']}/edge.env" in out
    assert f"|   LoadCredential=enrollment_secret:{dirs['config']}/enrollment_secret" in out


def test_dry_run_configuration_is_valid_for_the_agent(dirs: dict[str, Path]) -> None:
    out = _install(*_args(dirs, "--dry-run")).stdout
    block = out.split(f"+ write {dirs['config']}/edge.env (mode 0644)\n", 1)[1]
    env: dict[str, str] = {}
    for line in block.splitlines():
        if not line.startswith("|   "):
            break
        content = line[4:]
        if content and not content.startswith("#"):
            key, _, value = content.partition("=")
            env[key] = value
    assert env["SIMULTRAIN_EDGE_COORDINATOR_URL"] == "https://coordinator.simultrain.example.com"
    assert (env["SIMULTRAIN_EDGE_SHARD_INDEX"], env["SIMULTRAIN_EDGE_SHARD_COUNT"]) == ("1", "2")
    assert env["SIMULTRAIN_EDGE_NAME"] == "pi-test" and env["SIMULTRAIN_EDGE_STEPS"] == "500"
    assert env_problems(env, module="simultrain.edge", where="edge.env") == []


def test_a_pi_gets_the_cpu_build_of_torch(dirs: dict[str, Path], tmp_path: Path) -> None:
    """PyPI's aarch64 torch is a CUDA build (~3 GB of wheels): a Pi asks the CPU index."""
    result = _install(*_args(dirs, "--dry-run"), env=_on_aarch64(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "arch: aarch64" in result.stdout and "not aarch64" not in result.stderr
    torch_lines = [line for line in result.stdout.splitlines() if "torch==" in line]
    assert torch_lines == [
        f"+ {dirs['prefix']}/venv/bin/python -m pip install "
        "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0"
    ]


def test_a_mirror_or_a_wheelhouse_serves_an_offline_pi(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    env = _on_aarch64(tmp_path)
    mirror = _install(
        *_args(dirs, "--dry-run", "--torch-index-url", "https://mirror.example/torch-cpu",
               "--index-url", "https://mirror.example/pypi"), env=env,
    ).stdout  # fmt: skip
    assert "--index-url https://mirror.example/torch-cpu torch==2.13.0" in mirror
    assert f"--index-url https://mirror.example/pypi {REPO_ROOT}\n" in mirror
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    offline = _install(*_args(dirs, "--dry-run", "--wheelhouse", str(wheelhouse)), env=env)
    pips = [line for line in offline.stdout.splitlines() if " -m pip install" in line]
    assert len(pips) == 4 and all(f"--no-index --find-links {wheelhouse}" in p for p in pips), pips


def test_the_datasets_come_without_scikit_learn_or_scipy() -> None:
    """The dataset packages are installed --no-deps; the agent's own dependencies hold no
    scientific stack (seglearn's would bring scikit-learn, scipy and pandas: ~210 MB)."""
    from deploy_checks import dependency_closure

    sys.path.insert(0, str(REPO_ROOT / "docker"))
    try:
        import pyproject_deps
    finally:
        sys.path.pop(0)
    core = pyproject_deps.requirements(REPO_ROOT / "pyproject.toml", [], with_torch=True)
    closure = dependency_closure(core)
    assert not {"scikit-learn", "scipy", "pandas"} & closure, closure
    script = SCRIPT.read_text()
    assert '--no-deps -r "$datasets"' in script and "[data]" not in script


@pytest.mark.parametrize(
    ("option", "value", "complaint"),
    [
        ("--shard-index", "2", "--shard-index must be below --shard-count"),
        ("--coordinator-url", "ftp://x", "must be an http:// or https:// URL"),
        ("--name", "a b", "--name may hold only"),
    ],
    ids=["shard-out-of-range", "bad-url", "bad-name"],
)
def test_bad_arguments_are_refused(
    dirs: dict[str, Path], option: str, value: str, complaint: str
) -> None:
    args = _args(dirs, "--dry-run")
    args[args.index(option) + 1] = value
    result = _install(*args)
    assert result.returncode == 2 and complaint in result.stderr


def test_missing_arguments_print_the_usage() -> None:
    result = _install("--shard-index", "0")
    assert result.returncode == 2
    assert "--coordinator-url is required" in result.stderr and "usage:" in result.stderr


@pytest.mark.skipif(platform.machine() == "aarch64", reason="checks the refusal off aarch64")
def test_a_real_run_off_aarch64_refuses_before_changing_anything(dirs: dict[str, Path]) -> None:
    result = _install(*_args(dirs))
    assert result.returncode == 1 and "aarch64" in result.stderr
    for directory in ("prefix", "config", "units"):
        assert not dirs[directory].exists(), directory
