"""The coordinator on PostgreSQL as deployed: k8s/overlays/postgres (the dev overlay with the
k8s/components/postgres component) and the compose profile ``postgres``.

The overlay is rendered with ``kubectl kustomize`` and validated by ``kubernetes-validate
--strict``; the SimulTrain workloads in it pass the same checks as every overlay's
(deploy_checks.k8s_problems); then what the component adds: two coordinator replicas with no
volume of their own on a database only they may reach, with one password on both sides. The
compose profile's coordinator builds valid settings and finds the database where it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from deploy_checks import (
    REPO_ROOT,
    build_settings,
    compose_secret_files,
    container_env,
    k8s_problems,
    load_compose,
    render_overlay,
    service_secret_mounts,
    tool_problems,
)

from simultrain.coordinator.settings import CoordinatorSettings

OVERLAY = REPO_ROOT / "k8s" / "overlays" / "postgres"
DATABASE = "simultrain-postgres"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    from deploy_checks import find_tool

    text, objects = render_overlay(find_tool("kubectl"), OVERLAY)
    path = tmp_path_factory.mktemp("rendered") / "postgres.yaml"
    path.write_text(text)
    return path, objects


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def is_database(obj: dict[str, Any]) -> bool:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/name") == DATABASE


def test_the_overlay_renders_and_every_object_is_valid(
    tool: Callable[[str], str], rendered: tuple[Path, list[dict[str, Any]]]
) -> None:
    path, _ = rendered
    command = [tool("kubernetes-validate"), "--strict", "--quiet", str(path)]
    assert tool_problems(command, where=path.name) == []


def test_the_simultrain_workloads_pass_every_overlays_checks(
    rendered: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, objects = rendered
    assert k8s_problems([o for o in objects if not is_database(o)], tmp_path, gpu=False) == []


def test_two_coordinator_replicas_on_the_database(
    rendered: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, objects = rendered
    coordinator = named(objects, "Deployment", "simultrain-coordinator")
    assert coordinator["spec"]["replicas"] == 2
    assert coordinator["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    pod = coordinator["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env, files, problems = container_env(container, pod, objects, tmp_path)
    assert problems == []
    settings, problems = build_settings(
        env, module="simultrain.coordinator", where="coordinator", files=files
    )
    assert problems == [] and isinstance(settings, CoordinatorSettings)
    assert settings.database_url is not None
    url = urlsplit(settings.database_url.get_secret_value())
    assert (url.hostname, url.port) == (DATABASE, 5432)
    # the database's password is the one in the coordinator's URL
    database = named(objects, "StatefulSet", DATABASE)
    db_pod = database["spec"]["template"]
    (postgres,) = db_pod["spec"]["containers"]
    (tmp_path / "db").mkdir()
    db_env, db_files, problems = container_env(postgres, db_pod, objects, tmp_path / "db")
    assert problems == []
    password = db_files[db_env["POSTGRES_PASSWORD_FILE"]].read_text().strip()
    assert url.password == password
    assert database["spec"]["volumeClaimTemplates"]
    assert ":" in postgres["image"] and not postgres["image"].endswith(":latest")
    assert db_pod["spec"]["securityContext"]["runAsNonRoot"] is True
    budget = named(objects, "PodDisruptionBudget", "simultrain-coordinator")
    assert budget["spec"]["minAvailable"] == 1


def test_only_the_coordinator_reaches_the_database(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]

    def selects(policy: dict[str, Any], name: str) -> bool:
        labels = policy["spec"]["podSelector"].get("matchLabels", {})
        return labels == {"app.kubernetes.io/name": name}

    inbound = [p for p in policies if selects(p, DATABASE)]
    assert [
        peer["podSelector"]["matchLabels"]
        for policy in inbound
        for rule in policy["spec"].get("ingress", [])
        for peer in rule["from"]
    ] == [{"app.kubernetes.io/name": "simultrain-coordinator"}]
    outbound = [
        (peer.get("podSelector", {}).get("matchLabels"), port["port"])
        for policy in policies
        if selects(policy, "simultrain-coordinator")
        for rule in policy["spec"].get("egress", [])
        for peer in rule["to"]
        for port in rule.get("ports", [])
    ]
    assert ({"app.kubernetes.io/name": DATABASE}, 5432) in outbound
    # the default deny still closes everything else
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies)


def test_the_compose_profile_runs_two_replicas_on_postgres() -> None:
    compose_path = REPO_ROOT / "docker-compose.yml"
    default = load_compose(compose_path)
    assert "coordinator-postgres" not in default["services"]  # a profile: not run by default
    compose = load_compose(compose_path, profiles=["postgres"])
    services = compose["services"]
    coordinator, database = services["coordinator-postgres"], services["postgres"]
    assert coordinator["deploy"]["replicas"] == 2
    assert coordinator["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert database["healthcheck"]["test"][1] == "pg_isready"
    assert ":" in database["image"] and not database["image"].endswith(":latest")
    secret_files = compose_secret_files(compose, compose_path.parent)
    settings, problems = build_settings(
        coordinator["environment"],
        module="simultrain.coordinator",
        where="coordinator-postgres",
        files=service_secret_mounts(coordinator, secret_files),
    )
    assert problems == [] and isinstance(settings, CoordinatorSettings)
    assert settings.database_url is not None and settings.database_password is not None
    url = urlsplit(settings.database_url.get_secret_value())
    assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/simultrain")
    # one secret is the password on both sides
    password_file = database["environment"]["POSTGRES_PASSWORD_FILE"]
    mounts = service_secret_mounts(database, secret_files)
    assert mounts[password_file].read_text().strip() == (
        settings.database_password.get_secret_value()
    )
    assert database["volumes"][0].split(":")[0] in compose["volumes"]
