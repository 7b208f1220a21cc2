"""syncsgd rounds across edges, and gradient coding against stragglers (docs/DESIGN.md §5.3).

The cloud runtime with real edge runtimes and no I/O: a syncsgd round waits for every connected
edge (or its deadline) and steps once with the mean gradient; a gradient-coded round decodes
the full gradient from the first n − s coded uploads, whichever s edges never answer.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from simultrain.shared.data import BatchStream, load_dataset
from simultrain.shared.errors import ConfigError, TrainingError
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import Ack, Delta, EGrad, Frame
from simultrain.shared.tensors import as_received, state_to_wire
from simultrain.shared.training.assembly import Shard, build_cloud, build_edge, gradient_code
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.options import OptimizerConfig
from simultrain.shared.training.roles.coded import CodedEdgeRuntime
from simultrain.shared.training.roles.lockstep import WholeModel
from simultrain.shared.training.runtime import CloudRuntime

SPEC = get_model_spec("imu-cnn1d")
SGD = OptimizerConfig("sgd", lr=0.05)  # linear in the gradient: steps compare exactly
BATCH = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _cloud(run: RunConfig, edges: Iterable[str], clock: Clock | None = None) -> CloudRuntime:
    runtime = build_cloud(run, SPEC, clock=clock or Clock()).runtime
    for row, edge_id in enumerate(edges):
        runtime.open_session(edge_id, code_row=row if runtime.code is not None else None)
    return runtime


def _acked(out: list[tuple[str, Frame]]) -> dict[str, int]:
    return {edge_id: frame.seq for edge_id, frame in out if isinstance(frame, Ack)}


@functools.lru_cache(maxsize=4)
def _partition_batches(n: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One batch of each of ``n`` partitions (the round's batches)."""
    data = load_dataset("imu")
    out = {}
    for k in range(n):
        shard = data.shard(k, n)
        out[k] = next(BatchStream(shard.x_train, shard.y_train, batch_size=BATCH, seed=k))
    return out


def _gradient(weights: dict[str, Tensor], x: np.ndarray, y: np.ndarray) -> dict[str, Tensor]:
    """The whole model's gradient of the mean loss at ``weights``, computed directly."""
    structure = SPEC.build(0)
    model = WholeModel(structure.edge_stage, structure.cloud_stage)
    model.load_state_dict(weights)
    loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads, strict=True))


def _sgd_step(weights: dict[str, Tensor], grads: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """What an uncoded synchronous round takes: one SGD step with the mean gradient."""
    out = dict(weights)
    for name in grads[0]:
        mean = torch.stack([g[name] for g in grads]).mean(dim=0)
        out[name] = weights[name] - SGD.lr * mean
    return out


def _close(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=1e-6, msg=name)


def _upload(seq: int, version: int, grads: dict[str, Tensor], samples: int) -> EGrad:
    wire = as_received(state_to_wire(grads, "raw"))
    return EGrad(seq=seq, edge_version=version, grads=wire, samples=samples)


# --- syncsgd without coding: the round waits ------------------------------------------


def test_a_syncsgd_round_waits_for_every_edge_and_steps_once_with_the_mean() -> None:
    run = RunConfig(mode="syncsgd", edges=2, optimizer=SGD)
    cloud = _cloud(run, ("a", "b"))
    start = {n: t.clone() for n, t in cloud.master.full_state().items()}
    batches = _partition_batches(2)
    grads = [_gradient(start, *batches[k]) for k in range(2)]
    assert cloud.on_egrad("a", _upload(0, 0, grads[0], BATCH)) == []  # waits for "b"
    assert cloud.master.version == 0
    out = cloud.on_egrad("b", _upload(0, 0, grads[1], BATCH))
    assert _acked(out) == {"a": 0, "b": 0}
    assert cloud.master.version == 1 and cloud.master.samples_applied == 2 * BATCH
    _close(cloud.master.full_state(), _sgd_step(start, grads))


def test_a_syncsgd_round_past_its_deadline_steps_with_the_gradients_it_has() -> None:
    clock = Clock()
    run = RunConfig(mode="syncsgd", edges=2, optimizer=SGD, round_deadline_s=2.0)
    cloud = _cloud(run, ("fast", "slow"), clock)
    start = {n: t.clone() for n, t in cloud.master.full_state().items()}
    grad = _gradient(start, *_partition_batches(1)[0])
    assert cloud.on_egrad("fast", _upload(0, 0, grad, BATCH)) == []
    clock.now += 2.5
    assert _acked(cloud.close_round_if_due()) == {"fast": 0}
    assert cloud.partial_rounds == 1
    _close(cloud.master.full_state(), _sgd_step(start, [grad]))


def test_a_syncsgd_upload_that_does_not_fit_the_model_never_waits_in_a_round() -> None:
    cloud = _cloud(RunConfig(mode="syncsgd", edges=2), ("a", "b"))
    with pytest.raises(TrainingError, match="full gradient"):
        cloud.on_egrad("a", _upload(0, 0, {"edge.nonsense": torch.zeros(3)}, BATCH))
    assert cloud._round == {}


# --- gradient coding -------------------------------------------------------------------


def _coded_fleet(n: int, s: int) -> tuple[CloudRuntime, list[CodedEdgeRuntime], RunConfig]:
    """A cloud and ``n`` real edge runtimes coding with the run's code, all at version 0."""
    run = RunConfig(mode="syncsgd", edges=n, gradient_coding_s=s, optimizer=SGD)
    ids = [f"edge-{i}" for i in range(n)]
    cloud = _cloud(run, ids)
    edges = []
    for row, edge_id in enumerate(ids):
        edge = build_edge(run, SPEC, Shard(load_dataset("imu"), row, n)).runtime
        assert isinstance(edge, CodedEdgeRuntime) and edge.code_row == row
        edge.on_snap(cloud.resync(edge_id))
        edges.append(edge)
    return cloud, edges, run


def _coded_upload(
    edge: CodedEdgeRuntime, batches: dict[int, tuple[np.ndarray, np.ndarray]]
) -> EGrad:
    upload = edge.produce_coded({k: batches[k] for k in edge.round_partitions()})
    return EGrad(
        seq=upload.seq,
        edge_version=upload.edge_version,
        grads=as_received(upload.grads),
        samples=upload.samples,
    )


@pytest.mark.parametrize(("n", "s", "silent"), [(4, 1, {0}), (5, 2, {1, 3})])
def test_a_coded_round_decodes_without_its_stragglers_and_equals_the_uncoded_step(
    n: int, s: int, silent: set[int]
) -> None:
    cloud, edges, _ = _coded_fleet(n, s)
    start = {k: v.clone() for k, v in cloud.master.full_state().items()}
    batches = _partition_batches(n)
    answering = [i for i in range(n) if i not in silent]
    out: list[tuple[str, Frame]] = []
    for i in answering:
        assert not out  # the round decodes with the last of the n − s, not before
        out = cloud.on_egrad(f"edge-{i}", _coded_upload(edges[i], batches))
    # The silent edges never answered, yet the round is done: every answering edge gets
    # its new weights and its ACK.
    assert _acked(out) == {f"edge-{i}": 0 for i in answering}
    assert {e for e, f in out if isinstance(f, Delta)} == {f"edge-{i}" for i in answering}
    assert cloud.coded_rounds == 1 and cloud.master.version == 1
    # The applied update is the uncoded round's: the mean of all n partition gradients.
    uncoded = _sgd_step(start, [_gradient(start, *batches[k]) for k in range(n)])
    _close(cloud.master.full_state(), uncoded)
    # Accounting: n distinct partition batches applied once each; every answering edge
    # computed (and had applied) its s + 1 of them.
    assert cloud.master.samples_applied == n * BATCH
    for i in answering:
        assert cloud.sessions[f"edge-{i}"].samples_applied == (s + 1) * BATCH


def test_a_late_coded_upload_is_dropped_counted_and_answered() -> None:
    cloud, edges, _ = _coded_fleet(4, 1)
    batches = _partition_batches(4)
    late = _coded_upload(edges[3], batches)  # computed at version 0, arrives after its round
    for i in range(3):
        cloud.on_egrad(f"edge-{i}", _coded_upload(edges[i], batches))
    after = {k: v.clone() for k, v in cloud.master.full_state().items()}
    out = cloud.on_egrad("edge-3", late)
    # Not applied (its partitions are in the master already), but answered: the straggler
    # gets the current weights and its ACK, and moves on to the round now open.
    assert _acked(out) == {"edge-3": late.seq}
    assert any(isinstance(f, Delta) and f.to_version == 1 for _, f in out)
    _close(cloud.master.full_state(), after)
    state = cloud.sessions["edge-3"]
    assert (state.late_dropped, cloud.late_uploads_dropped) == (1, 1)
    assert state.samples_applied == 0 and state.samples_received == 2 * BATCH
    assert state.highest_applied_seq == late.seq  # settled: not re-sent after a reconnect
    assert cloud.master.samples_applied == 4 * BATCH


def test_a_coded_round_takes_one_gradient_per_row() -> None:
    cloud, edges, _ = _coded_fleet(4, 1)
    batches = _partition_batches(4)
    upload = _coded_upload(edges[0], batches)
    assert cloud.on_egrad("edge-0", upload) == []
    resent = EGrad(
        seq=upload.seq + 1,
        edge_version=upload.edge_version,
        grads=upload.grads,
        samples=upload.samples,
    )
    assert cloud.on_egrad("edge-0", resent) == []
    assert cloud.sessions["edge-0"].duplicates == 1 and len(cloud._coded) == 1


def test_coded_uploads_that_cannot_belong_to_the_round_are_dropped_or_refused() -> None:
    cloud, edges, _ = _coded_fleet(4, 1)
    upload = _coded_upload(edges[0], _partition_batches(4))
    # From a round the master does not hold (kept across a cloud that resumed from an older
    # checkpoint): not of this round, so dropped and answered like a late one.
    future = EGrad(seq=5, edge_version=7, grads=upload.grads, samples=upload.samples)
    assert _acked(cloud.on_egrad("edge-0", future)) == {"edge-0": 5}
    assert cloud.late_uploads_dropped == 1 and cloud.master.version == 0
    odd = EGrad(seq=6, edge_version=0, grads=upload.grads, samples=BATCH + 1)
    with pytest.raises(TrainingError, match="equal batches"):
        cloud.on_egrad("edge-0", odd)
    assert cloud._coded == {}


def test_the_cloud_refuses_code_rows_that_do_not_fit() -> None:
    run = RunConfig(mode="syncsgd", edges=3, gradient_coding_s=1)
    cloud = _cloud(run, ("a",))  # row 0
    for row in (None, 3, -1):
        with pytest.raises(TrainingError, match="code row"):
            cloud.open_session("b", code_row=row)
    with pytest.raises(TrainingError, match="held by the connected edge a"):
        cloud.open_session("b", code_row=0)
    cloud.close_session("a")
    cloud.open_session("b", code_row=0)  # free again once its holder left
    plain = _cloud(RunConfig(mode="syncsgd", edges=3), ())
    with pytest.raises(TrainingError, match="no gradient code"):
        plain.open_session("c", code_row=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "fedavg", "edges": 4, "gradient_coding_s": 1}, "syncsgd"),
        ({"mode": "simultrain", "edges": 4, "gradient_coding_s": 1}, "syncsgd"),
        ({"mode": "syncsgd", "edges": 2, "gradient_coding_s": 2}, "at least 3 edges"),
        ({"mode": "syncsgd", "edges": 1, "gradient_coding_s": 1}, "at least 2 edges"),
        ({"mode": "syncsgd", "edges": 4, "gradient_coding_s": -1}, "≥ 0"),
        (
            {"mode": "syncsgd", "edges": 4, "gradient_coding_s": 1, "round_deadline_s": 1.0},
            "round_deadline_s",
        ),
    ],
)
def test_gradient_coding_is_refused_where_it_cannot_work(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig(**kwargs)  # type: ignore[arg-type]


def test_the_coordinator_refuses_what_the_services_would() -> None:
    from pydantic import TypeAdapter, ValidationError

    from simultrain.coordinator.records import RunConfigField

    adapter = TypeAdapter(RunConfigField)
    with pytest.raises(ValidationError, match="syncsgd"):
        adapter.validate_python({"mode": "fedavg", "edges": 4, "gradient_coding_s": 1})
    run = adapter.validate_python({"mode": "syncsgd", "edges": 4, "gradient_coding_s": 1})
    assert run.gradient_coding_s == 1


def test_an_edge_and_a_cloud_of_one_run_hold_one_code() -> None:
    run = RunConfig(mode="syncsgd", edges=8, gradient_coding_s=2, seed=3)
    a, b = gradient_code(run), gradient_code(RunConfig.from_mapping(run.to_mapping()))
    assert a is not None and b is not None
    assert a.identity == b.identity == "cyclic n=8 s=2 seed=3"
    assert np.array_equal(a.matrix, b.matrix)
    assert gradient_code(RunConfig(mode="syncsgd", edges=8)) is None


def test_the_in_process_driver_codes_like_the_services_and_decodes_the_uncoded_step() -> None:
    """The driver builds coded edges and a decoding cloud from the run, as the services do:
    each round's decode is the uncoded round's mean of the n partition gradients (edge k's
    batches are partition k's), to the float32 rounding the decoding coefficients amplify."""
    from simultrain.shared.training.driver import run_in_process

    common = {"mode": "syncsgd", "edges": 4, "steps": 6, "optimizer_name": "sgd"}
    coded = run_in_process(RunConfig.from_mapping({**common, "gradient_coding_s": 1}))
    uncoded = run_in_process(RunConfig.from_mapping(common))
    assert coded.master is not None and uncoded.master is not None
    assert coded.master_version == uncoded.master_version == 6
    assert coded.samples == uncoded.samples == 6 * 4 * RunConfig().batch_size
    _close(coded.master.full_state(), uncoded.master.full_state())
    assert not all(
        torch.equal(t, uncoded.master.full_state()[n]) for n, t in coded.master.full_state().items()
    )  # decoded, not averaged: the same step to rounding, not bit for bit
