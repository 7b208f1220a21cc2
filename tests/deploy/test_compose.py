"""docker-compose.yml and its secrets (docs/DEPLOY.md §1, §5).

The file is validated against the Compose Specification's JSON schema (check-jsonschema's
built-in copy: no network), then against the code it runs: every ``SIMULTRAIN_*`` variable
must be a setting of the service it configures and the values must build valid settings
(secrets read from the shipped ``*.example`` files), every URL that names a compose service
must use the port that service listens on, dependencies wait for health, and the topology is
the one the issue asks for. tests/deploy/test_compose_topology.py runs it as processes.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from deploy_checks import (
    REPO_ROOT,
    compose_problems,
    env_problems,
    load_compose,
    merge_compose,
    plain_compose,
    tool_problems,
)

COMPOSE = REPO_ROOT / "docker-compose.yml"
BuildCopy = Callable[..., Path]


def _schema_problems(
    tool: Callable[[str], str], path: Path, scratch: Path | None = None
) -> list[str]:
    """check-jsonschema reads plain YAML: a file with compose's merge tags (``!override``) is
    checked as the tree it means on its own, written to ``scratch``."""
    if scratch is not None:
        plain = scratch / path.name
        plain.write_text(yaml.safe_dump(plain_compose(load_compose(path))), "utf-8")
        path = plain
    command = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
    return tool_problems(command, where=path.name)


def test_compose_file_matches_the_compose_spec(tool: Callable[[str], str]) -> None:
    assert _schema_problems(tool, COMPOSE) == []


def test_compose_spec_rejects_an_unknown_key(
    tool: Callable[[str], str], broken_copy: BuildCopy
) -> None:
    broken = broken_copy(
        "docker-compose.yml", "    stop_grace_period: 40s", "    stop_grace_seconds: 40"
    )
    problems = _schema_problems(tool, broken)
    assert problems and "stop_grace_seconds" in problems[0]


@pytest.mark.parametrize("profile", ["4g", "5g", "lan", "none", "rate=20mbit,rtt=40ms"])
def test_compose_services_match_their_settings(profile: str) -> None:
    assert compose_problems(COMPOSE, {"SIMULTRAIN_LINK_PROFILE": profile}) == []


def test_an_unknown_link_profile_is_caught() -> None:
    problems = compose_problems(COMPOSE, {"SIMULTRAIN_LINK_PROFILE": "6g"})
    assert any("SIMULTRAIN_NETEM_PROFILE" in p for p in problems), problems


def _edge0(old: str, new: str) -> tuple[str, str]:
    """An edit inside service edge-0 (its lines repeat in edge-1)."""
    anchor = "      SIMULTRAIN_EDGE_NAME: edge-0\n"
    return anchor + old, anchor + new


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("      SIMULTRAIN_CLOUD_PUBLIC_URL: ws://netem:9000",
         "      SIMULTRAIN_CLOUD_PUBLIC_ADDRESS: ws://netem:9000",
         "SIMULTRAIN_CLOUD_PUBLIC_ADDRESS is not a setting of simultrain.cloud"),
        ('SIMULTRAIN_COORDINATOR_WINDOW: "4"', 'SIMULTRAIN_COORDINATOR_WINDOW: "-1"',
         "SIMULTRAIN_COORDINATOR_WINDOW"),
        ('SIMULTRAIN_NETEM_UPSTREAM_PORT: "8800"', 'SIMULTRAIN_NETEM_UPSTREAM_PORT: "8801"',
         "upstream port is not the port cloud listens on"),
        (*_edge0("      SIMULTRAIN_EDGE_COORDINATOR_URL: http://coordinator:8700",
                 "      SIMULTRAIN_EDGE_COORDINATOR_URL: http://coordinator:8070"),
         "coordinator listens on 8700"),
        (*_edge0("      SIMULTRAIN_EDGE_COORDINATOR_URL", "      SIMULTRAIN_CLOUD_COORDINATOR_URL"),
         "does not configure simultrain.edge"),
        ("      SIMULTRAIN_CLOUD_PUBLIC_URL: ws://netem:9000",
         "      SIMULTRAIN_CLOUD_PUBLIC_URL: ws://cloud:8800",
         "edges do not reach it through netem"),
        ('SIMULTRAIN_EDGE_SHARD_INDEX: "0"', 'SIMULTRAIN_EDGE_SHARD_INDEX: "1"', "distinct shards"),
        ("      SIMULTRAIN_CLOUD_TOKEN_KEY_FILE: /run/secrets/token_key\n", "",
         "the coordinator issues edge tokens but the cloud has no key"),
        ("    command: [\"python\", \"-m\", \"simultrain.coordinator\"]",
         "    command: [\"python\", \"-m\", \"simultrain.coordinater\"]",
         "simultrain.coordinater is not a SimulTrain service"),
        ("    depends_on:\n      cloud:\n        condition: service_healthy",
         "    depends_on:\n      cloud:\n        condition: service_started",
         "depends on cloud without service_healthy"),
        ("      target: netem", "      target: edge", "image target edge does not run"),
        ("      - cloud-checkpoints:/var/lib/simultrain/checkpoints",
         "      - checkpoints:/var/lib/simultrain/checkpoints",
         "volume checkpoints is not declared"),
    ],
    ids=["unknown-variable", "invalid-value", "upstream-port", "url-port", "wrong-prefix",
         "bypasses-netem", "same-shard", "cloud-without-token-key", "unknown-module",
         "started-not-healthy", "wrong-image", "undeclared-volume"],
)  # fmt: skip
def test_compose_checks_reject_a_broken_copy(
    broken_copy: BuildCopy, old: str, new: str, complaint: str
) -> None:
    broken = broken_copy("docker-compose.yml", old, new)
    # The copy sits in tmp_path: its relative paths (build context, secrets) point there.
    (broken.parent / "docker").mkdir(exist_ok=True)
    (broken.parent / "docker" / "Dockerfile").symlink_to(REPO_ROOT / "docker" / "Dockerfile")
    secrets = broken.parent / "deploy" / "secrets"
    secrets.mkdir(parents=True)
    for example in (REPO_ROOT / "deploy" / "secrets").glob("*.example"):
        (secrets / example.name).symlink_to(example)
    problems = compose_problems(broken)
    assert any(complaint in p for p in problems), problems


def test_missing_secret_files_are_caught(broken_copy: BuildCopy) -> None:
    broken = broken_copy(
        "docker-compose.yml",
        "    file: ${SIMULTRAIN_SECRETS_DIR:-./deploy/secrets}/token_key\n",
        "    file: ${SIMULTRAIN_SECRETS_DIR:-./deploy/secrets}/token-key\n",
    )
    (broken.parent / "deploy").symlink_to(REPO_ROOT / "deploy")
    problems = compose_problems(broken)
    assert any("secret token_key" in p for p in problems), problems


def test_generate_secrets_writes_keys_the_services_accept(
    tmp_path: Path, tool: Callable[[str], str]
) -> None:
    script = REPO_ROOT / "deploy" / "secrets" / "generate.sh"
    assert tool_problems([tool("shellcheck"), str(script)], where=script.name) == []
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    copy = secrets / "generate.sh"
    copy.write_bytes(script.read_bytes())
    first = subprocess.run(["sh", str(copy)], capture_output=True, text=True, timeout=30)
    assert first.returncode == 0, first.stderr
    keys = {name: (secrets / name).read_text() for name in ("enrollment_secret", "token_key",
                                                            "admin_token")}  # fmt: skip
    assert all(len(value.strip()) >= 32 and value.endswith("\n") for value in keys.values())
    assert len(set(keys.values())) == 3
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((secrets / n).stat().st_mode) == 0o644 for n in keys)
    again = subprocess.run(["sh", str(copy)], capture_output=True, text=True, timeout=30)
    assert again.returncode == 0 and "kept" in again.stdout
    assert keys["token_key"] == (secrets / "token_key").read_text()
    # The generated keys are what the services accept (token_key ≥ 32 bytes, …).
    env = {"SIMULTRAIN_SECRETS_DIR": str(secrets)}
    assert compose_problems(COMPOSE, env) == []


def test_secret_examples_are_tracked_and_real_secrets_are_not() -> None:
    ignore = (REPO_ROOT / "deploy" / "secrets" / ".gitignore").read_text()
    assert "*\n" in ignore and "!*.example" in ignore
    examples = sorted(p.name for p in (REPO_ROOT / "deploy" / "secrets").glob("*.example"))
    assert examples == ["admin_token.example", "enrollment_secret.example", "token_key.example"]
    k8s_examples = sorted(p.name for p in (REPO_ROOT / "k8s" / "base" / "secrets").iterdir())
    assert k8s_examples == examples
    assert os.access(REPO_ROOT / "deploy" / "secrets" / "generate.sh", os.R_OK)


# --- docker-compose.replicas.yml: the cloud scaled out (docs/REPLICAS.md) -------------------

REPLICAS_OVERRIDE = REPO_ROOT / "docker-compose.replicas.yml"


def test_replicas_override_matches_the_compose_spec(
    tool: Callable[[str], str], tmp_path: Path
) -> None:
    assert _schema_problems(tool, REPLICAS_OVERRIDE, tmp_path) == []


def test_replicas_override_builds_a_replica_group_of_the_scale() -> None:
    from simultrain.cloud.replicas import Rendezvous

    base = load_compose(COMPOSE)
    override = load_compose(REPLICAS_OVERRIDE, {"SIMULTRAIN_CLOUD_REPLICAS": "3"})
    env = {
        **base["services"]["cloud"]["environment"],
        **override["services"]["cloud"]["environment"],
    }
    files = {
        path: REPO_ROOT / "deploy" / "secrets" / f"{Path(path).name}.example"
        for path in env.values()
        if path.startswith("/run/secrets/")
    }
    assert env_problems(env, module="simultrain.cloud", where="cloud", files=files) == []
    rendezvous = Rendezvous.from_env(env)
    assert rendezvous is not None
    assert rendezvous.rank is None  # compose gives no ordinal: the store runs on its own
    assert rendezvous.world_size == 3
    assert rendezvous.master_addr in override["services"]
    store = override["services"][rendezvous.master_addr]
    assert store["command"][-2:] == ["simultrain.cloud.replicas", str(rendezvous.master_port)]
    assert store["environment"]["MASTER_PORT"] == str(rendezvous.master_port)  # its health check


def test_the_cloud_keeps_its_documented_port_and_replicas_get_one_each() -> None:
    """One cloud is always localhost:8800 (the port the docs curl); a range let Docker hand
    out 8801, 8802, … on later `up`s. Scaled, each replica gets a port Docker picks."""
    base = load_compose(COMPOSE)
    assert base["services"]["cloud"]["ports"] == ["127.0.0.1:8800:8800"]
    merged = merge_compose(base, load_compose(REPLICAS_OVERRIDE))
    assert merged["services"]["cloud"]["ports"] == ["127.0.0.1::8800"]
    guide = (REPO_ROOT / "docs" / "DEPLOY.md").read_text("utf-8")
    assert "localhost:8800/v1/eval" in guide and "port --index" in guide


def test_each_image_is_built_by_one_service() -> None:
    """Compose builds once per service that has a `build`: two edges with one, twice."""
    merged = merge_compose(load_compose(COMPOSE), load_compose(REPLICAS_OVERRIDE))
    builders: dict[str, list[str]] = {}
    for name, service in merged["services"].items():
        if "build" in service:
            builders.setdefault(service["image"], []).append(name)
        else:
            # A service without `build` runs an image another service builds (not a pull).
            assert any(s.get("image") == service["image"] and "build" in s
                       for s in merged["services"].values()), name  # fmt: skip
    assert {image: len(names) for image, names in builders.items()} == dict.fromkeys(builders, 1), (
        builders
    )
