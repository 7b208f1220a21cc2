"""k8s/: the kustomize base and the dev and gpu overlays (docs/DEPLOY.md §3, §5).

Both overlays are rendered with ``kubectl kustomize`` (the kubectl of the `test` extra, which
embeds kustomize), every rendered object is validated by ``kubernetes-validate --strict``
against the Kubernetes API schema, and then checked against the code: each container's
``SIMULTRAIN_*`` environment (ConfigMaps, Secrets and mounted secret files resolved) must
build valid settings, probes must hit /readyz and /healthz on the port the service listens
on, the termination grace period must cover the cloud's drain, and the references between
objects (Service selectors, Ingress backends, the StatefulSet's Service) must resolve.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from deploy_checks import REPO_ROOT, k8s_problems, render_overlay, run_tool, tool_problems

OVERLAYS = ["dev", "gpu"]


def _validate(tool: Callable[[str], str], rendered: Path) -> list[str]:
    command = [tool("kubernetes-validate"), "--strict", "--quiet", str(rendered)]
    return tool_problems(command, where=rendered.name)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[Any]]]:
    """Each overlay rendered once: the YAML file and its objects."""
    from deploy_checks import find_tool

    out = tmp_path_factory.mktemp("rendered")
    result: dict[str, tuple[Path, list[Any]]] = {}
    for overlay in OVERLAYS:
        text, objects = render_overlay(
            find_tool("kubectl"), REPO_ROOT / "k8s" / "overlays" / overlay
        )
        path = out / f"{overlay}.yaml"
        path.write_text(text, "utf-8")
        result[overlay] = (path, objects)
    return result


@pytest.fixture
def k8s_copy(tmp_path: Path) -> Callable[[str, str, str], Path]:
    """A copy of k8s/ with one edit in one file (which must apply exactly once)."""

    def make(relative: str, old: str, new: str) -> Path:
        root = tmp_path / "k8s"
        if not root.exists():
            shutil.copytree(REPO_ROOT / "k8s", root)
        target = root / relative
        text = target.read_text("utf-8")
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {relative}"
        target.write_text(text.replace(old, new), "utf-8")
        return root

    return make


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_is_valid(
    tool: Callable[[str], str], rendered: dict[str, tuple[Path, list[Any]]], overlay: str
) -> None:
    path, objects = rendered[overlay]
    kinds = sorted({obj["kind"] for obj in objects})
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "Ingress", "Namespace", "NetworkPolicy",
         "PersistentVolumeClaim", "PodDisruptionBudget", "Secret", "Service", "StatefulSet"]
    )  # fmt: skip
    assert _validate(tool, path) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_matches_the_services(
    rendered: dict[str, tuple[Path, list[Any]]], overlay: str, tmp_path: Path
) -> None:
    _, objects = rendered[overlay]
    assert k8s_problems(objects, tmp_path, gpu=overlay == "gpu") == []
    namespaces = {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"}
    assert namespaces == {"simultrain-dev" if overlay == "dev" else "simultrain"}


def test_kubernetes_validate_rejects_an_unknown_field(
    tool: Callable[[str], str], k8s_copy: Callable[[str, str, str], Path], tmp_path: Path
) -> None:
    root = k8s_copy("base/poddisruptionbudget.yaml", "  minAvailable: 1\n", "  minAvailble: 1\n")
    text, _ = render_overlay(tool("kubectl"), root / "overlays" / "dev")
    broken = tmp_path / "broken.yaml"
    broken.write_text(text)
    problems = _validate(tool, broken)
    assert problems and "minAvailble" in problems[0]


def test_kustomize_rejects_a_missing_resource(
    tool: Callable[[str], str], k8s_copy: Callable[[str, str, str], Path]
) -> None:
    root = k8s_copy("base/kustomization.yaml", "  - ingress.yaml\n", "  - ingres.yaml\n")
    result = run_tool([tool("kubectl"), "kustomize", str(root / "overlays" / "gpu")])
    assert result.returncode != 0 and "ingres.yaml" in result.stderr


@pytest.mark.parametrize(
    ("overlay", "relative", "old", "new", "complaint"),
    [
        ("dev", "base/cloud.env", "SIMULTRAIN_CLOUD_COMPUTE_THREADS=2",
         "SIMULTRAIN_CLOUD_THREADS=2", "SIMULTRAIN_CLOUD_THREADS is not a setting"),
        ("dev", "base/run.env", "SIMULTRAIN_COORDINATOR_BETA=0.9",
         "SIMULTRAIN_COORDINATOR_BETA=1.5", "SIMULTRAIN_COORDINATOR_BETA"),
        ("gpu", "base/cloud.yaml", "      terminationGracePeriodSeconds: 60",
         "      terminationGracePeriodSeconds: 20", "does not cover preStop"),
        ("dev", "base/cloud.yaml", "      enableServiceLinks: false\n", "",
         "enableServiceLinks must be false"),
        ("dev", "base/coordinator.yaml", "              path: /readyz",
         "              path: /ready", "readinessProbe is not GET /readyz"),
        ("gpu", "overlays/gpu/kustomization.yaml", "  - path: cloud-gpu.yaml\n", "",
         "GPU overlay without nvidia.com/gpu: 1"),
        ("dev", "base/cloud.yaml", "              mountPath: /var/lib/simultrain/checkpoints",
         "              mountPath: /var/lib/simultrain/ckpt", "are not on a claimed volume"),
        ("dev", "base/cloud.yaml",
         "\n              - key: token_key\n                path: token_key", "",
         "TOKEN_KEY_FILE=/run/secrets/simultrain/token_key, but no secret is mounted"),
        ("dev", "base/networkpolicy.yaml",
         "  name: simultrain-default-deny\nspec:\n  podSelector: {}",
         "  name: simultrain-default-deny\nspec:\n  podSelector:\n    matchLabels: {a: b}",
         "no default-deny NetworkPolicy"),
        ("dev", "base/ingress.yaml", "                name: simultrain-cloud\n",
         "                name: simultrain-clod\n", "no Service simultrain-clod"),
        ("gpu", "overlays/gpu/kustomization.yaml", "    count: 1\n", "    count: 3\n",
         "WORLD_SIZE 1 but 3 replicas"),
    ],
    ids=["unknown-variable", "invalid-value", "short-grace", "service-links", "probe-path",
         "gpu-without-gpu", "checkpoints-not-persistent", "cloud-without-token-key",
         "no-default-deny", "ingress-backend", "replicas-without-world-size"],
)  # fmt: skip
def test_k8s_checks_reject_a_broken_copy(
    tool: Callable[[str], str],
    k8s_copy: Callable[[str, str, str], Path],
    tmp_path: Path,
    overlay: str,
    relative: str,
    old: str,
    new: str,
    complaint: str,
) -> None:
    root = k8s_copy(relative, old, new)
    _, objects = render_overlay(tool("kubectl"), root / "overlays" / overlay)
    problems = k8s_problems(objects, tmp_path, gpu=overlay == "gpu")
    assert any(complaint in p for p in problems), problems


def test_example_keys_are_marked_as_examples() -> None:
    kustomization = (REPO_ROOT / "k8s" / "base" / "kustomization.yaml").read_text()
    assert "EXAMPLE VALUES" in kustomization
    for example in (REPO_ROOT / "k8s" / "base" / "secrets").iterdir():
        assert example.name.endswith(".example")
        assert example.read_text().startswith("CHANGE-ME")
