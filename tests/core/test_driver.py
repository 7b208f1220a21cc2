"""The in-process driver: every frame through the real codec, every mode a schedule."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from simultrain.shared.data import BatchStream, load_dataset
from simultrain.shared.models import get_model_spec
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.dana import DanaEdgeStep
from simultrain.shared.training.driver import run_in_process
from simultrain.shared.training.options import Codecs, OptimizerConfig

STEPS = 60


def sequential_split_training(config: RunConfig) -> dict[str, torch.Tensor]:
    """Plain split learning, written out by hand: edge fwd, cloud fwd+bwd+step, edge bwd+step."""
    dataset = load_dataset(config.dataset, seed=config.seed)
    model = get_model_spec(config.model_id or dataset.model_id).build(config.seed)
    edge_opt = config.optimizer.build(list(model.edge_stage.parameters()), stage="edge")
    cloud_opt = config.optimizer.build(list(model.cloud_stage.parameters()), stage="cloud")
    stream = BatchStream(
        dataset.x_train, dataset.y_train, batch_size=config.batch_size, seed=config.seed
    )
    for _ in range(config.steps):
        xb, yb = next(stream)
        x, y = torch.from_numpy(xb), torch.from_numpy(yb)
        out = model.edge_stage(x)
        cut = out.detach().requires_grad_(True)
        loss = F.cross_entropy(model.cloud_stage(cut), y)
        cloud_opt.zero_grad(set_to_none=True)
        loss.backward()
        cloud_opt.step()
        edge_opt.zero_grad(set_to_none=True)
        out.backward(cut.grad)
        edge_opt.step()
    state = {f"edge.{n}": t for n, t in model.edge_stage.state_dict().items()}
    state.update({f"cloud.{n}": t for n, t in model.cloud_stage.state_dict().items()})
    return state


@pytest.mark.parametrize(
    "optimizer",
    [
        OptimizerConfig(lr=0.05),
        OptimizerConfig(lr=0.01, momentum=0.9),
        OptimizerConfig("adam", lr=1e-3),
    ],
    ids=["sgd", "momentum", "adam"],
)
@pytest.mark.parametrize("delta_codec", ["lz4", "raw"])
def test_window_zero_is_bit_identical_to_sequential_split_training(
    optimizer: OptimizerConfig, delta_codec: str
) -> None:
    config = RunConfig(
        mode="simultrain",
        window=0,
        steps=STEPS,
        optimizer=optimizer,
        codecs=Codecs(delta=delta_codec),
    )
    result = run_in_process(config)
    assert result.master is not None
    reference = sequential_split_training(config)
    ours = result.master.full_state()
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name
    assert result.max_staleness == 0


@pytest.mark.parametrize("window", [1, 2, 4, 8])
def test_recorded_staleness_never_exceeds_the_window(window: int) -> None:
    # PROTOCOL.md §6.3: W batches in flight from ACT to ACK, so a gradient misses at most the
    # edge-stage updates of the W − 1 batches before it (W = 1 is lockstep).
    result = run_in_process(RunConfig(mode="simultrain", window=window, steps=STEPS))
    assert result.max_staleness == window - 1  # reached in steady state, never exceeded
    assert set(map(int, result.staleness["histogram"])) <= set(range(window))
    assert result.samples == STEPS * 32


def test_window_one_is_window_zero() -> None:
    """One meaning of the window: 0 and 1 both keep one batch in flight (PROTOCOL §6.3)."""
    results = [run_in_process(RunConfig(mode="simultrain", window=w, steps=20)) for w in (0, 1)]
    states = [r.master.full_state() for r in results if r.master is not None]
    assert len(states) == 2
    for name, tensor in states[0].items():
        assert torch.equal(states[1][name], tensor), name


def test_several_edges_each_have_a_session_and_the_history_covers_them_all() -> None:
    result = run_in_process(RunConfig(mode="simultrain", window=2, steps=30, edges=3))
    assert result.samples == 30 * 32 * 3
    # An edge's gradient misses its own W batches *and* what the other edges applied
    # meanwhile (docs/DESIGN.md §6.2): staleness exceeds one edge's window, and the history, sized
    # in master versions, still covers every gradient: none is dropped.
    assert result.max_staleness > 2
    assert result.staleness["dropped"] == 0


@pytest.mark.parametrize(
    "mode",
    [
        "centralized",
        "syncsgd",
        "split-sync",
        "fedavg",
        "simultrain-noforecast",
        "simultrain-noreconcile",
    ],
)
def test_every_mode_runs_through_the_codec(mode: str) -> None:
    result = run_in_process(RunConfig(mode=mode, steps=20, local_steps=5))
    assert result.samples == 20 * 32
    assert result.bytes_up > 0 and result.bytes_down > 0
    assert 0.0 <= result.accuracy <= 1.0


def test_lockstep_modes_agree_exactly_on_one_edge() -> None:
    """centralized, syncsgd and split-sync are one computation with different wires."""
    results = {
        mode: run_in_process(RunConfig(mode=mode, steps=25)).master
        for mode in ("centralized", "syncsgd", "split-sync")
    }
    states = {mode: m.full_state() for mode, m in results.items() if m is not None}
    for name, tensor in states["centralized"].items():
        assert torch.equal(states["syncsgd"][name], tensor), name
        assert torch.equal(states["split-sync"][name], tensor), name


def replica_error(codec: str, *, reconcile_every: int | None = None) -> tuple[float, int]:
    """Largest |replica − master| relative to max |master| after a run, and bytes down."""
    result = run_in_process(
        RunConfig(
            mode="simultrain",
            window=2,
            steps=60,
            reconcile_every=reconcile_every,
            codecs=Codecs(delta=codec, topk_ratio=0.1),
        )
    )
    assert result.master is not None and result.samples == 60 * 32
    replica = result.edges["edge-0"].replica
    assert replica is not None and replica.version == result.master_version
    master = result.master.edge_weights()
    worst = max(
        float((replica.current.tensors[n].detach() - t).abs().max() / t.abs().max())
        for n, t in master.items()
    )
    return worst, result.bytes_down


def test_lossless_deltas_make_the_replica_the_master_bit_for_bit() -> None:
    assert replica_error("lz4")[0] == 0.0


@pytest.mark.parametrize(("codec", "bound"), [("fp16", 1e-3), ("int8", 2e-2), ("topk", 0.2)])
def test_lossy_deltas_keep_the_replica_close_and_cost_fewer_bytes(codec: str, bound: float) -> None:
    """Error feedback: what a lossy delta lost goes out with the next one, so the replica's
    error stays at one delta's codec error instead of adding up over the run."""
    error, down = replica_error(codec)
    _, lossless_down = replica_error("lz4")
    assert 0.0 < error < bound
    assert down < lossless_down


def test_config_round_trips_through_its_mapping() -> None:
    config = RunConfig(
        mode="fedavg",
        window=3,
        optimizer=OptimizerConfig("adam", lr=0.002),
        codecs=Codecs(delta="int8"),
    )
    assert RunConfig.from_mapping(config.to_mapping(), base=copy.copy(RunConfig())) == RunConfig(
        **{**config.__dict__, "steps": RunConfig().steps}
    )


def test_the_cloud_counts_each_edges_staleness_apart_from_the_fleets() -> None:
    """docs/DESIGN.md §3.8: the cloud records τ per batch; per edge too, so a fleet's laggard is
    visible."""
    from simultrain.shared.training.assembly import build_cloud
    from simultrain.shared.training.runtime import CloudSessionState

    config = RunConfig(mode="simultrain", dataset="imu", edges=2, window=2, seed=0)
    spec = load_dataset("imu", seed=0).model_spec(None)
    cloud = build_cloud(config, spec).runtime
    laggard, other = CloudSessionState("edge-a"), CloudSessionState("edge-b")
    grads = {n: torch.zeros_like(t) for n, t in cloud.replica_template().items()}
    v0 = cloud.master.version
    cloud._apply_edge_gradient(other, grads, v0, samples=32)
    cloud._apply_edge_gradient(laggard, grads, v0, samples=32)  # missed the other's update
    cloud._apply_edge_gradient(laggard, grads, -(10**6), samples=32)  # older than the history
    assert laggard.summary()["staleness"]["histogram"] == {"1": 1}
    assert laggard.summary()["staleness"]["dropped"] == 1
    assert other.summary()["staleness"]["histogram"] == {"0": 1}
    assert cloud.master.staleness.summary()["histogram"] == {"0": 1, "1": 1}


def test_a_fleet_batch_divides_a_fleets_edge_stage_staleness() -> None:
    """``fleet-batch``: one edge-stage step per batch of every edge, so a gradient misses
    about W + 1 steps instead of E·(W + 1) updates; every sample is still applied."""
    runs = {
        c: run_in_process(RunConfig(mode="simultrain", window=2, steps=8, edges=3, compensation=c))
        for c in ("none", "fleet-batch")
    }
    plain, batched = runs["none"], runs["fleet-batch"]
    assert batched.master is not None and plain.master is not None
    assert batched.samples == plain.samples == 8 * 32 * 3
    assert batched.master.edge_updates == 8 and plain.master.edge_updates == 24
    assert batched.master.edge_step.gathered == 0  # nothing left gathered at the end
    assert batched.staleness["dropped"] == 0
    assert batched.max_staleness <= 3 < plain.max_staleness


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(
    "optimizer",
    [OptimizerConfig(lr=0.01, momentum=0.9), OptimizerConfig("adam", lr=1e-3)],
    ids=["momentum", "adam"],
)
def test_dana_at_window_zero_is_sequential_split_training_bit_for_bit(
    optimizer: OptimizerConfig,
) -> None:
    """``dana`` with one edge at window 0: its one momentum is the optimizer's and no
    gradient is late, so nothing is looked ahead: the plain update, bit for bit."""
    config = RunConfig(
        mode="simultrain", window=0, steps=20, optimizer=optimizer, compensation="dana"
    )
    result = run_in_process(config)
    assert result.master is not None and isinstance(result.master.edge_step, DanaEdgeStep)
    assert result.master.edge_step.momenta.counts == {"edge-0": 20}
    reference = sequential_split_training(config)
    for name, tensor in reference.items():
        assert torch.equal(result.master.full_state()[name], tensor), name


@pytest.mark.usefixtures("one_torch_thread")
def test_dana_in_a_fleet_steps_each_edge_with_its_own_momentum_and_sends_the_lookahead() -> None:
    """Three edges: the runtime names each edge's gradient by its session, so the master keeps
    three momenta; the edges' replicas receive the look-ahead, not the master's weights."""
    result = run_in_process(
        RunConfig(mode="simultrain", window=2, steps=6, edges=3, compensation="delay-beta1+dana")
    )
    master = result.master
    assert master is not None and isinstance(master.edge_step, DanaEdgeStep)
    assert master.edge_step.momenta.counts == {f"edge-{i}": 6 for i in range(3)}
    assert result.samples == 6 * 32 * 3 and result.staleness["dropped"] == 0
    assert master.observed_staleness > 0
    sent, own = master.edge_weights_for_replica(), master.edge_weights()
    latest = [
        r.replica
        for r in result.edges.values()
        if r.replica is not None and r.replica.version == master.version
    ]
    assert latest  # the edge answered last holds the master's newest version
    for name, tensor in sent.items():
        assert torch.equal(latest[0].current.tensors[name].detach(), tensor), name
    assert any(not torch.equal(sent[n], own[n]) for n in own)  # it is a look-ahead
