"""docker/Dockerfile, .dockerignore and the scripts the images run (docs/DEPLOY.md §2, §5).

No image is built here (no Docker engine): the Dockerfile is parsed with BuildKit's own
parser and checked for what a build or a container would trip over — a COPY source missing
from the build context, a CMD module that does not exist, a root user, an unpinned base, the
code copied before the dependencies (cache) — then linted by hadolint. Each check is also
shown to reject a broken copy.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_checks import (
    IMAGE_TARGETS,
    REPO_ROOT,
    VENV_BASELINE,
    dependency_closure,
    dockerfile_problems,
    image_requirements,
    imported_distributions,
    parse_dockerfile,
    tool_problems,
)

DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
BuildCopy = Callable[..., Path]


def test_dockerfile_passes_the_static_checks() -> None:
    assert dockerfile_problems(DOCKERFILE) == []


def test_hadolint_accepts_the_dockerfile(tool: Callable[[str], str]) -> None:
    assert tool_problems([tool("hadolint"), str(DOCKERFILE)], where="docker/Dockerfile") == []


def test_hadolint_rejects_a_bad_instruction(
    tool: Callable[[str], str], broken_copy: BuildCopy
) -> None:
    broken = broken_copy(
        "docker/Dockerfile", "WORKDIR /opt/simultrain/src", "RUN cd /opt && sudo mkdir src"
    )
    assert tool_problems([tool("hadolint"), str(broken)], where="broken")


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("FROM python-base AS app-wheel\nARG PIP_INDEX_URL PIP_TRUSTED_HOST\n"
         "COPY pyproject.toml constraints.txt README.md ./",
         "FROM python-base AS app-wheel\nARG PIP_INDEX_URL PIP_TRUSTED_HOST\n"
         "COPY pyproject.toml constraints.txt README.rst ./",
         "COPY source README.rst does not exist"),
        ('CMD ["python", "-m", "simultrain.cloud"]', 'CMD ["python", "-m", "simultrain.clod"]',
         "simultrain.clod"),
        ('CMD ["python", "-m", "simultrain.edge"]', "CMD python -m simultrain.edge",
         "no CMD in exec (JSON) form"),
        ("USER 10001:10001\nWORKDIR /var/lib/simultrain\nEXPOSE 8800", "USER root\nEXPOSE 8800",
         "target cloud: runs as root"),
        ("ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm", "ARG PYTHON_IMAGE=python:3-slim",
         "is not pinned to a version"),
        ("FROM netem-deps AS netem", "FROM python-base AS netem",
         "target netem: dependencies are not installed before the code is copied"),
        ('CMD ["simultrain-healthcheck", "edge"]', 'CMD ["simultrain-healthcheck", "cloud"]',
         "HEALTHCHECK does not check edge"),
        ("SIMULTRAIN_CLOUD_CHECKPOINT_DIR=/var", "SIMULTRAIN_CLOUD_CHECKPOINTS=/var",
         "SIMULTRAIN_CLOUD_CHECKPOINTS is not a setting"),
    ],
    ids=["missing-copy-source", "unknown-module", "shell-form-cmd", "root", "unpinned-base",
         "code-before-deps", "wrong-healthcheck", "unknown-env"],
)  # fmt: skip
def test_dockerfile_checks_reject_a_broken_copy(
    broken_copy: BuildCopy, old: str, new: str, complaint: str
) -> None:
    broken = broken_copy("docker/Dockerfile", old, new)
    problems = dockerfile_problems(broken)
    assert any(complaint in problem for problem in problems), problems


def test_dockerignore_that_drops_code_is_caught(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "constraints.txt", "README.md", "services", "shared", "docker"):
        if (REPO_ROOT / name).exists():
            (context / name).symlink_to(REPO_ROOT / name)
    ignore = (REPO_ROOT / ".dockerignore").read_text("utf-8")
    (context / ".dockerignore").write_text(ignore.replace("!shared/\n", ""), "utf-8")
    problems = dockerfile_problems(DOCKERFILE, context=context)
    assert any("COPY source shared is excluded by .dockerignore" in p for p in problems), problems


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    from deploy_checks import dockerignored

    ignore = REPO_ROOT / ".dockerignore"
    for path in (
        "deploy/secrets/token_key",
        ".venv/bin/python",
        ".git/config",
        "k8s/base",
        "services/__pycache__/cli.cpython-311.pyc",
        "runs/x.db",
        "tests/conftest.py",
    ):
        assert dockerignored(path, ignore), path
    for path in (
        "services/cloud/app.py",
        "shared/protocol/codec.py",
        "docker/healthcheck.py",
        "pyproject.toml",
    ):
        assert not dockerignored(path, ignore), path  # fmt: skip


def test_default_torch_is_the_one_the_suite_runs() -> None:
    """The images train with the torch that constraints.txt pins for CI (and the Pi script)."""
    pins = re.findall(r"^torch==(\S+)", (REPO_ROOT / "constraints.txt").read_text(), re.M)
    assert pins, "constraints.txt pins no torch"
    spec = parse_dockerfile(DOCKERFILE).arg_default("TORCH_SPEC")
    assert spec == f"torch=={pins[0]}"
    installer = (REPO_ROOT / "deploy" / "pi" / "install-edge.sh").read_text()
    assert f'DEFAULT_TORCH_SPEC="torch=={pins[0]}"' in installer
    compose = (REPO_ROOT / "docker-compose.yml").read_text()
    assert f"${{SIMULTRAIN_TORCH_SPEC:-torch=={pins[0]}}}" in compose


@pytest.mark.parametrize("target", sorted(IMAGE_TARGETS))
def test_each_image_installs_everything_its_service_imports(target: str) -> None:
    """What ``python -m MODULE`` imports at start-up comes from what the image installs.

    The image's requirements are read off its RUN lines (torch, pyproject_deps.py extras,
    --no-deps extras); their dependency closure must own every imported module. This is what
    keeps the edge image slim (no fastapi) and the netem image torch-free without breaking.
    """
    parsed = parse_dockerfile(DOCKERFILE)
    allowed = dependency_closure(image_requirements(parsed, target, REPO_ROOT / "pyproject.toml"))
    allowed |= VENV_BASELINE | {"simultrain"}
    imported = imported_distributions(IMAGE_TARGETS[target])
    missing = {module: dists for module, dists in imported.items() if not dists & allowed}
    assert missing == {}, f"the {target} image lacks what these imports need: {missing}"


def test_an_image_missing_a_dependency_is_caught(broken_copy: BuildCopy) -> None:
    broken = broken_copy(
        "docker/Dockerfile", "--only pydantic pydantic-settings", "--only pydantic"
    )
    parsed = parse_dockerfile(broken)
    allowed = dependency_closure(image_requirements(parsed, "netem", REPO_ROOT / "pyproject.toml"))
    imported = imported_distributions(IMAGE_TARGETS["netem"])
    assert any(not dists & allowed for dists in imported.values())


# --- docker/pyproject_deps.py --------------------------------------------------------------


def _deps(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "docker" / "pyproject_deps.py"),
         str(REPO_ROOT / "pyproject.toml"), *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_pyproject_deps_lists_core_and_extras_without_torch() -> None:
    server = _deps("server,data").stdout.split()
    names = {re.split(r"[<>=!~\[ ;]", line)[0].lower() for line in server}
    assert {"fastapi", "uvicorn", "seglearn", "websockets", "numpy"} <= names
    assert "torch" not in names
    edge = {re.split(r"[<>=!~\[ ;]", line)[0].lower() for line in _deps("data").stdout.split()}
    assert "fastapi" not in edge and "seglearn" in edge
    only = _deps("", "--only", "pydantic", "pydantic-settings").stdout.split()
    assert [re.split(r"[<>=]", line)[0] for line in only] == ["pydantic", "pydantic-settings"]


def test_pyproject_deps_refuses_an_unknown_extra() -> None:
    result = _deps("server,nonsense")
    assert result.returncode != 0 and "nonsense" in result.stderr


# --- docker/healthcheck.py -----------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[tuple[int, dict[str, int]]]:
    """A server on 127.0.0.1:0 answering every GET with ``status["code"]``."""
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], status
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _healthcheck(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SIMULTRAIN_")}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "docker" / "healthcheck.py"), service],
        env={**clean, **env}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("service", "port_var"),
    [("coordinator", "SIMULTRAIN_COORDINATOR_PORT"), ("cloud", "SIMULTRAIN_CLOUD_PORT"),
     ("netem", "SIMULTRAIN_NETEM_LISTEN_PORT")],
)  # fmt: skip
def test_healthcheck_follows_the_service_and_its_port(
    http_server: tuple[int, dict[str, int]], service: str, port_var: str
) -> None:
    port, status = http_server
    env = {port_var: str(port), port_var.replace("PORT", "HOST"): "0.0.0.0"}
    assert _healthcheck(service, env).returncode == 0
    status["code"] = 503
    unhealthy = _healthcheck(service, env)
    assert unhealthy.returncode == 1 and "503" in unhealthy.stderr


def test_healthcheck_of_an_edge_reads_the_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    env = {"SIMULTRAIN_EDGE_STATUS_FILE": str(status), "SIMULTRAIN_HEALTHCHECK_MAX_AGE_S": "60"}
    assert _healthcheck("edge", env).returncode == 1  # nothing acknowledged yet
    status.write_text("{}")
    assert _healthcheck("edge", env).returncode == 0
    stale = time.time() - 3600
    os.utime(status, (stale, stale))
    assert _healthcheck("edge", env).returncode == 1
    assert _healthcheck("nonsense", {}).returncode == 1


# --- builds that reach only what the build arguments name (docs/DEPLOY.md §2) --------------

MIRROR_ARGS = ("PIP_INDEX_URL", "PIP_TRUSTED_HOST")


def _pip_stages(parsed: Any) -> dict[str, list[str]]:
    """Stage → the build args it declares, for each stage whose pip may reach an index."""
    stages: dict[str, list[str]] = {}
    for name, stage in parsed.stages.items():
        runs = [" ".join(c.value) for c in stage.commands if c.cmd == "RUN"]
        if any(re.search(r"pip (install|wheel|download)", r) and "--no-index" not in r
               for r in runs):  # fmt: skip
            stages[name] = [
                word.split("=", 1)[0] for c in stage.commands if c.cmd == "ARG" for word in c.value
            ]
    return stages


def test_mirror_settings_reach_every_pip_that_uses_an_index() -> None:
    """An ARG is visible to pip (as its PIP_* variable) only in a stage that declares it."""
    stages = _pip_stages(parse_dockerfile(DOCKERFILE))
    assert {"torch", "server-deps", "edge-deps", "netem-deps", "app-wheel"} <= set(stages)
    missing = {s: [a for a in MIRROR_ARGS if a not in args] for s, args in stages.items()}
    assert {s: m for s, m in missing.items() if m} == {}
    # What the docs tell a user to set is what the Dockerfile and compose pass on.
    guide = (REPO_ROOT / "docs" / "DEPLOY.md").read_text("utf-8")
    compose = (REPO_ROOT / "docker-compose.yml").read_text("utf-8")
    for arg in (*MIRROR_ARGS, "TORCH_INDEX_URL", "PYTHON_IMAGE"):
        assert arg in guide, arg
        assert f"{arg}: ${{SIMULTRAIN_{arg}" in compose, arg


def test_a_stage_without_the_mirror_args_is_caught(broken_copy: BuildCopy) -> None:
    broken = broken_copy(
        "docker/Dockerfile",
        "FROM python-base AS netem-deps\nARG PIP_INDEX_URL PIP_TRUSTED_HOST\n",
        "FROM python-base AS netem-deps\n",
    )
    stages = _pip_stages(parse_dockerfile(broken))
    assert "PIP_INDEX_URL" not in stages["netem-deps"]


def test_no_build_step_needs_a_registry_or_buildkit() -> None:
    """`# syntax=` pulls a frontend image from Docker Hub; --chmod, --mount and --link need
    BuildKit, which an engine without buildx does not offer (the classic builder refuses)."""
    text = DOCKERFILE.read_text("utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    parsed = parse_dockerfile(DOCKERFILE)
    flags = {f.split("=", 1)[0] for s in parsed.stages.values() for c in s.commands
             for f in c.flags}  # fmt: skip
    assert flags <= {"--from", "--interval", "--timeout", "--start-period", "--retries"}, flags
    # COPY keeps the mode from the build context: the health check must be executable there.
    assert os.access(REPO_ROOT / "docker" / "healthcheck.py", os.X_OK)
    # The only base image is the build argument: the upstream one, or one from Debian.
    assert {s.base for s in parsed.stages.values()} - set(parsed.stages) == {"${PYTHON_IMAGE}"}


def test_the_wheel_the_images_install_lists_every_package(tmp_path: Path) -> None:
    """The images install the project's wheel: it carries the dashboard's files, and
    setuptools finds no importable folder missing from pyproject.toml's `packages`."""
    import zipfile

    # From a copy of the files git knows: pip builds in the tree, and a build/lib left by an
    # earlier build would hide a module that the listed packages no longer carry.
    source = tmp_path / "source"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True, text=True, timeout=60, check=True, cwd=REPO_ROOT,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    assert "absent from the `packages` configuration" not in build.stdout + build.stderr
    (wheel,) = tmp_path.glob("simultrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "simultrain/coordinator/static/dashboard.html" in names
    # setuptools leaves an unlisted sub-package's modules out without a word: every module
    # of the two mapped folders must be in the wheel (a missing one crashes the images).
    mapped = {"services": "simultrain", "shared": "simultrain/shared"}
    modules = {
        f"{mapped[top]}/{path.relative_to(REPO_ROOT / top).as_posix()}"
        for top in mapped
        for path in (REPO_ROOT / top).rglob("*.py")
    }
    assert modules - names == set()
