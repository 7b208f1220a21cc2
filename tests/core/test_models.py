"""Split models: registry, deterministic init, shapes at the cut, parameter sharing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simultrain.shared.data import BatchStream, load_dataset
from simultrain.shared.errors import ConfigError
from simultrain.shared.models import (
    ModelNotFound,
    ModelSpec,
    find_model_for_input,
    get_model_spec,
    init_parameters,
    list_models,
    model_spec_for,
    register_model,
)

BUILTIN = ["imu-cnn1d", "mnist-cnn", "video-cnn", "imu-thin"]


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registry_lists_the_builtin_models() -> None:
    assert set(BUILTIN) <= set(list_models())
    for model_id in BUILTIN:
        spec = get_model_spec(model_id)
        assert isinstance(spec, ModelSpec)
        assert spec.model_id == model_id


def test_builtin_shapes() -> None:
    imu, mnist, video, thin = (get_model_spec(m) for m in BUILTIN)
    assert (imu.input_shape, imu.cut_shape, imu.num_classes) == ((6, 128), (32, 32), 7)
    assert (thin.input_shape, thin.cut_shape, thin.num_classes) == ((6, 128), (16, 16), 7)
    assert (mnist.input_shape, mnist.cut_shape, mnist.num_classes) == (
        (1, 28, 28),
        (16, 14, 14),
        10,
    )
    assert (video.input_shape, video.cut_shape, video.num_classes) == (
        (8, 1, 64, 64),
        (8, 16, 4, 4),
        10,
    )


def test_unknown_model_id_is_a_clear_error() -> None:
    with pytest.raises(ModelNotFound, match=r"unknown model id 'resnet-9000'.*imu-cnn1d") as info:
        get_model_spec("resnet-9000")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ConfigError)
    assert str(info.value).startswith("unknown model id")  # not KeyError's quoted repr


@pytest.mark.parametrize(
    ("model_id", "input_shape", "num_classes"),
    [
        ("imu-cnn1d-3x256", (3, 256), 7),
        ("imu-cnn1d-c6", (6, 128), 6),
        ("mnist-cnn-3x32x32-c100", (3, 32, 32), 100),
        ("video-cnn-16x1x96x96", (16, 1, 96, 96), 10),
    ],
)
def test_parametrised_ids_round_trip(
    model_id: str, input_shape: tuple[int, ...], num_classes: int
) -> None:
    spec = get_model_spec(model_id)
    assert (spec.model_id, spec.input_shape, spec.num_classes) == (
        model_id,
        input_shape,
        num_classes,
    )
    family = model_id.split("-")[0] + "-" + model_id.split("-")[1]
    same = model_spec_for(family, input_shape=input_shape, num_classes=num_classes)
    assert same == spec


@pytest.mark.parametrize(
    "model_id", ["imu-cnn1d-6x3", "imu-cnn1d-6", "mnist-cnn-1x28", "imu-cnn1d-c1"]
)
def test_impossible_shapes_are_refused(model_id: str) -> None:
    with pytest.raises(ModelNotFound):
        get_model_spec(model_id)


def test_find_model_for_input() -> None:
    assert find_model_for_input((6, 128), 7).model_id == "imu-cnn1d"
    assert find_model_for_input((3, 256), 5).model_id == "imu-cnn1d-3x256-c5"
    assert find_model_for_input((1, 28, 28), 10).model_id == "mnist-cnn"
    assert find_model_for_input((8, 1, 64, 64), 10).model_id == "video-cnn"
    with pytest.raises(ModelNotFound, match="no registered model takes input shape"):
        find_model_for_input((40,), 3)


def test_register_model_refuses_duplicates_and_bad_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("imu-cnn1d", input_shape=(6, 128), num_classes=7)
    with pytest.raises(ValueError, match="invalid model name"):
        register_model("Bad_Name", input_shape=(6, 128), num_classes=7)


@pytest.mark.parametrize("model_id", BUILTIN)
def test_build_is_deterministic_per_seed(model_id: str) -> None:
    spec = get_model_spec(model_id)
    a, b, c = spec.build(seed=7), spec.build(seed=7), spec.build(seed=8)
    assert _same_parameters(a.edge_stage, b.edge_stage)
    assert _same_parameters(a.cloud_stage, b.cloud_stage)
    assert not _same_parameters(a.edge_stage, c.edge_stage)
    assert all(torch.isfinite(p).all() for p in a.full().parameters())


def test_build_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    get_model_spec("video-cnn").build(seed=0)
    get_model_spec("imu-cnn1d-3x64-c4")  # a new spec runs a meta-device forward
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("model_id", BUILTIN)
def test_stage_shapes_match_the_spec(model_id: str) -> None:
    spec = get_model_spec(model_id)
    model = spec.build(seed=0)
    x = torch.randn(3, *spec.input_shape)
    cut = model.edge_stage(x)
    assert tuple(cut.shape) == (3, *spec.cut_shape)
    logits = model.cloud_stage(cut)
    assert tuple(logits.shape) == (3, spec.num_classes)
    assert torch.equal(model.full()(x), logits)


def test_video_edge_stage_compresses_heavily() -> None:
    spec = get_model_spec("video-cnn")
    assert spec.input_numel == 8 * 64 * 64
    assert spec.cut_numel * 16 == spec.input_numel  # 16x fewer values cross the link
    big = get_model_spec("video-cnn-8x1x128x128")
    assert big.cut_numel * 16 == big.input_numel


def test_full_shares_parameters_with_the_stages() -> None:
    model = get_model_spec("imu-cnn1d").build(seed=0)
    full = model.full()
    stage_params = {id(p) for p in model.edge_stage.parameters()} | {
        id(p) for p in model.cloud_stage.parameters()
    }
    assert {id(p) for p in full.parameters()} == stage_params
    assert all(k.startswith(("edge_stage.", "cloud_stage.")) for k in full.state_dict())
    first = next(model.edge_stage.parameters())
    before = first.detach().clone()
    optimizer = torch.optim.SGD(full.parameters(), lr=0.1)
    full(torch.randn(4, 6, 128)).square().mean().backward()
    optimizer.step()
    assert not torch.equal(first.detach(), before)


def test_modules_with_buffers_are_refused() -> None:
    with pytest.raises(TypeError, match="buffers"):
        init_parameters(nn.Sequential(nn.Conv1d(6, 8, 3), nn.BatchNorm1d(8)), torch.Generator())
    with pytest.raises(TypeError, match="no deterministic initialiser"):
        init_parameters(nn.Sequential(nn.Embedding(4, 2)), torch.Generator())


@pytest.mark.slow
def test_imu_cnn1d_learns_the_held_out_subjects() -> None:
    """The pilot setting (docs/DESIGN.md §10): plain SGD lr 0.05, batch 32, 1 500 steps (measured
    0.84 at seed 0)."""
    data = load_dataset("imu")
    full = get_model_spec(data.model_id).build(seed=0).full()
    optimizer = torch.optim.SGD(full.parameters(), lr=0.05)
    stream = BatchStream(data.x_train, data.y_train, batch_size=32, seed=0)
    for _ in range(1500):
        x, y = next(stream)
        loss = nn.functional.cross_entropy(full(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = full(torch.tensor(data.x_test)).argmax(dim=1)
    accuracy = (predicted == torch.tensor(data.y_test)).float().mean().item()
    assert accuracy > 0.75


def test_imu_thin_is_the_papers_payload_regime() -> None:
    """The bench's ``imu-thin`` workload: per batch of 32 the cut activation (32 KiB in fp32)
    is smaller than the window it comes from and than the whole model's weights, which is
    what SyncSGD moves each way; ``imu-cnn1d`` is the opposite regime."""

    def sizes(model_id: str) -> tuple[int, int, int]:
        spec = get_model_spec(model_id)
        params = sum(p.numel() for p in spec.build(seed=0).full().parameters())
        return spec.input_numel, spec.cut_numel, params

    window, cut, params = sizes("imu-thin")
    assert cut * 3 <= window and cut * 32 < params
    window, cut, params = sizes("imu-cnn1d")
    assert cut > window and cut * 32 > params
    assert find_model_for_input((6, 128), 7).model_id == "imu-cnn1d"  # still the default
