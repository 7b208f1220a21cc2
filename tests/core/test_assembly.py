"""The run's one assembly (shared/training/assembly.py): every key of the run configuration
either changes what `build_cloud` and `build_edge` build or says, where it is declared, why
it does not; every mode gets its role's runtimes from the registry; and nothing else in the
project puts runtimes, masters or a session's window together."""

from __future__ import annotations

import ast
import dataclasses
import enum
import hashlib
import random
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn

from simultrain.cloud.settings import CloudSettings
from simultrain.edge.settings import EdgeSettings
from simultrain.shared.data import Dataset, load_dataset
from simultrain.shared.errors import ConfigError
from simultrain.shared.run_settings import run_config_field
from simultrain.shared.training import assembly
from simultrain.shared.training.assembly import ROLES, Shard, build_cloud, build_edge
from simultrain.shared.training.config import Key, RunConfig, RunKey
from simultrain.shared.training.driver import run_in_process
from simultrain.shared.training.roles.coded import CodedCloudRuntime, CodedEdgeRuntime
from simultrain.shared.training.roles.lockstep import (
    FullGradientCloudRuntime,
    FullGradientEdgeRuntime,
    LocalStepsCloudRuntime,
    LocalStepsEdgeRuntime,
)
from simultrain.shared.training.roles.raw import RawCloudRuntime, RawEdgeRuntime
from simultrain.shared.training.roles.split import SplitCloudRuntime, SplitEdgeRuntime
from simultrain.shared.training.roles.synthetic import (
    LocalSyntheticEdgeRuntime,
    SyntheticCloudRuntime,
    SyntheticEdgeRuntime,
)
from simultrain.shared.training.schedule import MODES, EdgeRole, Schedule

REPO = Path(__file__).resolve().parents[2]
DATA = load_dataset("imu")
SPEC = DATA.model_spec()

# --- what the builders build, as comparable data ----------------------------------------------


def describe(obj: Any, seen: dict[int, Any] | None = None, depth: int = 0) -> Any:
    """Everything reachable from ``obj`` as plain, comparable data: values, tensors and arrays
    by digest, optimizers by their hyper-parameters and state, objects by their attributes.
    Two builds describe equal exactly when nothing they hold differs."""
    seen = {} if seen is None else seen  # id → the object (held, so no id is reused)
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    if isinstance(obj, enum.Enum):
        return (type(obj).__name__, obj.value)
    if isinstance(obj, torch.device | torch.dtype):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        data = obj.detach().to("cpu").contiguous().numpy().tobytes()
        return ("tensor", str(obj.dtype), tuple(obj.shape), hashlib.sha256(data).hexdigest())
    if isinstance(obj, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()
        return ("array", str(obj.dtype), obj.shape, digest)
    if isinstance(obj, np.random.Generator):
        return ("rng", describe(obj.bit_generator.state, seen, depth + 1))
    if isinstance(obj, random.Random):
        return ("random", obj.getstate())
    if id(obj) in seen or depth > 12:
        return ("seen", type(obj).__name__)
    seen[id(obj)] = obj
    nested = lambda value: describe(value, seen, depth + 1)  # noqa: E731
    if isinstance(obj, torch.optim.Optimizer):
        groups = [{k: nested(v) for k, v in g.items() if k != "params"} for g in obj.param_groups]
        return (type(obj).__name__, groups, nested(obj.state_dict()["state"]))
    if isinstance(obj, nn.Module):
        return (type(obj).__name__, nested(dict(obj.state_dict())))
    if isinstance(obj, Mapping):
        return (type(obj).__name__, sorted((repr(k), nested(v)) for k, v in obj.items()))
    if isinstance(obj, list | tuple | set | frozenset) or type(obj).__name__ == "deque":
        items = [nested(v) for v in obj]
        return (type(obj).__name__, sorted(items, key=repr) if isinstance(obj, set) else items)
    if callable(obj) and not hasattr(obj, "__dict__"):
        return ("callable", getattr(obj, "__qualname__", type(obj).__name__))
    if dataclasses.is_dataclass(obj):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return (type(obj).__name__, nested(fields))
    attributes: dict[str, Any] = {}
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                attributes[name] = getattr(obj, name)
    attributes.update(getattr(obj, "__dict__", {}))
    if callable(obj) and not attributes:
        return ("callable", getattr(obj, "__qualname__", type(obj).__name__))
    return (type(obj).__name__, nested(attributes))


def built(run: RunConfig) -> Any:
    """What the builders make of ``run``: the cloud, and an edge holding shard 0 of 2 (the
    shard a participant is given does not depend on the run here, so only what the builders
    read from the run can make two descriptions differ)."""
    torch.manual_seed(0)
    cloud = build_cloud(run, SPEC, clock=lambda: 0.0)
    edge = build_edge(run, SPEC, Shard(DATA, 0, 2))
    return describe((cloud, edge))


# Runs in which each key is tried: a key whose change is refused in one (α without a
# forecast part, a round deadline with gradient coding) is tried in the others.
CONTEXTS: tuple[Mapping[str, Any], ...] = (
    {},
    {"optimizer_name": "sgd"},
    {"mode": "fedavg"},
    {"compensation": "forecast"},
    {"mode": "syncsgd", "edges": 3},
    {"mode": "syncsgd", "edges": 3, "gradient_coding_s": 1},
    # The fleet's keys (docs/FLEET.md): the pooled reference is centralized training, and a
    # mixed step's options are read where the cloud mixes.
    {"mode": "centralized", "edges": 2},
    {"edges": 2, "mix_edges": 2},
)

# Free-form text keys: their changed value cannot be read off the declaration.
EXAMPLES: Mapping[str, Any] = {
    "dataset": "mnist",
    "model_id": "imu-thin",
    "compensation": "forecast",
}


def changed(key: RunKey, value: Any) -> list[Any]:
    """Valid values of ``key`` other than ``value``, read off its declaration (every other
    choice: two may mean the same, as ``auto`` and ``groups`` for data that has groups)."""
    if key.name in EXAMPLES:
        return [EXAMPLES[key.name]]
    k = key.key
    if k.choices:
        return [c for c in k.choices if c != value]
    if key.kind is bool:
        return [not value]
    lower = k.ge if k.ge is not None else k.gt if k.gt is not None else 0
    upper = k.le if k.le is not None else k.lt
    if key.kind is int:
        # A key's words (the window's `auto`) are values too.
        words = [w for w in key.words if w != value]
        start = 0 if value is None or value in key.words else value
        return [*words, start + 1 if upper is None or start + 1 < upper else start - 1]
    if value is None or value == 0:
        return [(lower + upper) / 2 if upper is not None else lower + 1.0]
    doubled = value * 2
    return [doubled if upper is None or doubled < upper else (value + upper) / 2]


@dataclass(frozen=True)
class Verdict:
    key: str
    changes: bool  # changed what the builders build, in the first context that takes it
    context: Mapping[str, Any] | None
    value: Any


def verdicts(config: type[RunConfig], only: Collection[str] = ()) -> Iterator[Verdict]:
    """Each key of ``config`` (or of ``only``) changed alone in each context until the build
    differs."""
    baselines: dict[int, Any] = {}
    for key in config.declaration():
        if only and key.name not in only:
            continue
        verdict = Verdict(key.name, False, None, None)
        for i, context in enumerate(CONTEXTS):
            base = config.from_mapping(context)
            for value in changed(key, base.to_mapping(driver=True)[key.name]):
                try:
                    run = config.from_mapping({**context, key.name: value})
                except ConfigError:
                    continue
                if i not in baselines:
                    baselines[i] = built(base)
                verdict = Verdict(key.name, built(run) != baselines[i], context, value)
                if verdict.changes:
                    break
            if verdict.changes:
                break
        yield verdict


def undeclared(config: type[RunConfig], only: Collection[str] = ()) -> list[str]:
    """Keys that neither change the build nor declare why not, and inert keys that do."""
    problems = []
    inert = {key.name: key.inert for key in config.declaration()}
    for verdict in verdicts(config, only):
        if verdict.context is None:
            problems.append(f"{verdict.key}: no context takes a changed value {verdict.value!r}")
        elif verdict.changes and inert[verdict.key]:
            problems.append(
                f"{verdict.key} is declared inert ({inert[verdict.key]}) but {verdict.value!r} "
                f"changes what the builders build (in {dict(verdict.context)})"
            )
        elif not verdict.changes and not inert[verdict.key]:
            problems.append(
                f"{verdict.key}: {verdict.value!r} changes nothing the builders build; read "
                "it in shared/training/assembly.py or declare why not (Key(inert=...))"
            )
    return problems


@pytest.mark.usefixtures("one_torch_thread")
def test_every_run_key_changes_what_the_builders_build_or_says_why_not() -> None:
    assert undeclared(RunConfig) == []
    inert = {key.name: key.inert for key in RunConfig.declaration() if key.inert}
    assert sorted(inert) == ["dataset", "eval_every", "model_id", "steps"]
    assert all(len(reason) > 20 for reason in inert.values())


def test_the_description_sees_what_a_build_holds() -> None:
    """The check above is only as good as `describe`: two builds of one run describe equal,
    and a change anywhere in what they hold (a stream's position, one weight of the master,
    a setting of a runtime) shows."""
    run = RunConfig()
    assert built(run) == built(run)
    cloud, edge = build_cloud(run, SPEC), build_edge(run, SPEC, Shard(DATA, 0, 2))
    before = describe((cloud, edge))
    next(edge.stream)
    after_stream = describe((cloud, edge))
    assert after_stream != before
    with torch.no_grad():
        next(iter(cloud.master.edge_stage.parameters())).view(-1)[0] += 1e-6
    after_weight = describe((cloud, edge))
    assert after_weight != after_stream
    cloud.runtime.checkpointing = True
    assert describe((cloud, edge)) != after_weight


# --- adding a key: its declaration and the one place that reads it ------------------------------


@dataclass(frozen=True)
class _Probe(RunConfig):
    """A run configuration with one more key, as a new key is added: declared once."""

    probe_history_floor: Annotated[
        int, Key("Master versions of edge-stage history kept at least.", ge=1)
    ] = 512


@dataclass(frozen=True)
class _InertProbe(RunConfig):
    probe_note: Annotated[
        int, Key("A key no participant builds anything from.", ge=0, inert="a note, read by no one")
    ] = 0


class _ProbeCloud(CloudSettings):
    run: run_config_field(_Probe) = Field(default_factory=_Probe)  # type: ignore[valid-type]


class _ProbeEdge(EdgeSettings):
    run: run_config_field(_Probe) = Field(default_factory=_Probe)  # type: ignore[valid-type]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_new_key_is_its_declaration_plus_the_one_place_that_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Declared, a key is a setting of every service and reaches every builder with the run
    (shared/run_settings.py, the coordinator's wire form); until it is read, or declared
    inert, the check above names it. Read in one place of the assembly — the history's
    depth, patched here as the edit would make it — it changes what every participant
    builds, with no other edit: not in the services, not in the driver."""
    assert undeclared(_InertProbe, only={"probe_note"}) == []
    assert undeclared(_Probe, only={"probe_history_floor"}) == [
        "probe_history_floor: 513 changes nothing the builders build; read it in "
        "shared/training/assembly.py or declare why not (Key(inert=...))"
    ]
    original = assembly.history_versions

    def reads_the_probe(run: RunConfig, schedule: Schedule) -> int:
        return max(getattr(run, "probe_history_floor", 512), original(run, schedule))

    monkeypatch.setattr(assembly, "history_versions", reads_the_probe)
    assert undeclared(_Probe, only={"probe_history_floor"}) == []
    # From a cloud's environment to its master; from the coordinator's wire form (what an
    # edge is handed) to the driver's run.
    monkeypatch.setenv("SIMULTRAIN_CLOUD_RUN_PROBE_HISTORY_FLOOR", "4096")
    cloud_run = _ProbeCloud().run
    assert build_cloud(cloud_run, SPEC).master.history_versions == 4096
    handed = _Probe.from_mapping(cloud_run.to_mapping())
    assert handed.probe_history_floor == 4096
    assert _ProbeEdge(run_probe_history_floor=1024).run.probe_history_floor == 1024
    result = run_in_process(_Probe.from_mapping({"probe_history_floor": 2048, "steps": 1}))
    assert result.master is not None and result.master.history_versions == 2048
    assert build_cloud(RunConfig(), SPEC).master.history_versions == 512


# --- roles: one registry, chosen once -----------------------------------------------------------

EXPECTED = {
    "simultrain": (SplitCloudRuntime, SplitEdgeRuntime),
    "simultrain-noforecast": (SplitCloudRuntime, SplitEdgeRuntime),
    "simultrain-noreconcile": (SplitCloudRuntime, SplitEdgeRuntime),
    "split-sync": (SplitCloudRuntime, SplitEdgeRuntime),
    "centralized": (RawCloudRuntime, RawEdgeRuntime),
    "synthetic": (SyntheticCloudRuntime, LocalSyntheticEdgeRuntime),
    "synthetic-nolocal": (SyntheticCloudRuntime, SyntheticEdgeRuntime),
    "syncsgd": (FullGradientCloudRuntime, FullGradientEdgeRuntime),
    "fedavg": (LocalStepsCloudRuntime, LocalStepsEdgeRuntime),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_gets_its_roles_runtimes(mode: str) -> None:
    run = RunConfig(mode=mode)
    cloud, edge = build_cloud(run, SPEC), build_edge(run, SPEC, Shard(DATA))
    assert (type(cloud.runtime), type(edge.runtime)) == EXPECTED[mode]
    assert cloud.limits.window == edge.limits.window == run.schedule().window
    assert cloud.cut_shape == edge.cut_shape
    assert edge.runtime.codecs == cloud.runtime.codecs == run.codecs


def test_gradient_coding_is_a_role_of_its_own() -> None:
    run = RunConfig(mode="syncsgd", edges=4, gradient_coding_s=1)
    cloud, edge = build_cloud(run, SPEC), build_edge(run, SPEC, Shard(DATA, 2, 4))
    assert isinstance(cloud.runtime, CodedCloudRuntime)
    assert isinstance(edge.runtime, CodedEdgeRuntime)
    assert edge.runtime.code_row == 2 and sorted(edge.runtime.partitions) == [2, 3]
    assert cloud.runtime.code is not None and edge.runtime.code is not None
    assert cloud.runtime.code.identity == edge.runtime.code.identity
    assert set(ROLES) == set(EdgeRole)


# --- nothing else assembles -----------------------------------------------------------------------

ASSEMBLED = {
    "CloudMaster",
    "CloudRuntime",
    "EdgeRuntime",
    *(cls.__name__ for pair in EXPECTED.values() for cls in pair),
    "CodedCloudRuntime",
    "CodedEdgeRuntime",
    "SyntheticGradientTrainer",
    "FleetCloudRuntime",
    "CloudMixer",
    "EdgeCopies",
}


def _constructions(path: Path) -> Iterator[str]:
    """Calls in ``path`` that build a runtime or a master, or set a session's window."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if name in ASSEMBLED:
            yield f"{path.relative_to(REPO)}:{node.lineno} {name}(…)"
        if name == "Limits" and any(k.arg == "window" for k in node.keywords):
            yield f"{path.relative_to(REPO)}:{node.lineno} Limits(window=…)"


def test_the_services_the_driver_and_the_benches_assemble_only_through_the_seam() -> None:
    """Runtimes, masters and the window a session enforces are put together in
    shared/training/assembly.py (and the role classes' own constructors) and nowhere else:
    not in the cloud, the edge, the in-process driver or a benchmark."""
    sources: list[Path] = []
    for folder in ("services", "shared", "bench"):
        sources.extend(sorted((REPO / folder).rglob("*.py")))
    allowed = {REPO / "shared/training/assembly.py"}
    # The conformance kit (services/conformance/) is no participant: it observes a client
    # against PROTOCOL.md and reads the window the client was told, whatever the run.
    observers = REPO / "services/conformance"
    sources = [path for path in sources if observers not in path.parents]
    found = [c for path in sources if path not in allowed for c in _constructions(path)]
    roles = REPO / "shared/training/roles"
    found = [c for c in found if not c.startswith(str(roles.relative_to(REPO)))]
    assert found == []


def test_the_assembly_hands_the_builders_inputs_it_was_given() -> None:
    """A participant's data and shard are its own (a cloud may evaluate on other data, an
    edge is told its shard): the builders read them as given."""
    shard: Callable[[Dataset], Shard] = lambda data: Shard(data, 1, 3)  # noqa: E731
    run = RunConfig(edges=3, partition="iid")
    edge = build_edge(run, SPEC, shard(DATA))
    assert edge.samples == len(DATA.shard(1, 3, partition="iid").y_train)
