"""Bring your own model: ``package.module:factory`` ids, their refusals, the fingerprint."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from simultrain.shared.data import load_dataset
from simultrain.shared.data.errors import InvalidDataset
from simultrain.shared.errors import ConfigError
from simultrain.shared.models import (
    ModelNotFound,
    architecture_fingerprint,
    custom_model_spec,
    get_model_spec,
)
from simultrain.shared.protocol import Hello, decode_frame, encode_frame
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process

EXAMPLE = "examples.tiny_mobilenet:build"
IMAGE = (1, 28, 28)


def write_images(path: Path, count: int = 96, classes: int = 3) -> str:
    """A small npz of C×H×W images whose class is its mean brightness (learnable)."""
    rng = np.random.default_rng(0)
    y = np.arange(count) % classes
    x = rng.normal(0.0, 1.0, (count, *IMAGE)).astype(np.float32) + y[:, None, None, None]
    np.savez(path, X=x, y=y)
    return f"npz:{path}"


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module ``user_models_<n>`` with factories for the refusal cases."""
    name = f"user_models_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def mlp(input_shape, num_classes):
                return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(),
                                     nn.Linear(16, num_classes)), "1"

            def bad_cut(input_shape, num_classes):
                return mlp(input_shape, num_classes)[0], "nope"

            def last_cut(input_shape, num_classes):
                return mlp(input_shape, num_classes)[0], "3"

            def not_a_pair(input_shape, num_classes):
                return nn.Linear(3, 3)

            def batchnorm(input_shape, num_classes):
                return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                                     nn.LazyLinear(num_classes)), "1"

            not_callable = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name


def test_example_cut_by_layer_name_and_by_explicit_pair() -> None:
    by_name = custom_model_spec(EXAMPLE, input_shape=IMAGE, num_classes=10)
    explicit = custom_model_spec(
        "examples.tiny_mobilenet:build_explicit", input_shape=IMAGE, num_classes=10
    )
    # The narrow cut: 8 channels at a quarter of the resolution, half the input's values.
    assert by_name.cut_shape == explicit.cut_shape == (8, 7, 7)
    assert by_name.model_id == EXAMPLE and by_name.input_shape == IMAGE
    model = by_name.build(seed=3)
    x = torch.randn(4, *IMAGE)
    assert model.full()(x).shape == (4, 10)
    # Deterministic from the seed, like the built-ins: both sides agree on the initial master.
    again = by_name.build(seed=3)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            model.full().state_dict().values(), again.full().state_dict().values(), strict=True
        )
    )
    # Depthwise-separable: the edge's depthwise conv has one filter per channel.
    assert model.edge_stage.block1[0].groups == 16


def test_a_custom_id_needs_the_data_shape() -> None:
    with pytest.raises(ModelNotFound, match="needs the data's input shape"):
        get_model_spec(EXAMPLE)
    assert get_model_spec(EXAMPLE, input_shape=IMAGE, num_classes=10).cut_shape == (8, 7, 7)


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("no_such_package_xyz.models:build", "cannot import 'no_such_package_xyz.models'"),
        ("examples.tiny_mobilenet:missing", "has no 'missing'"),
        ("examples/tiny_mobilenet.py:build", "package.module:factory"),
        ("{mod}:not_callable", "is not callable"),
        ("{mod}:bad_cut", r"no layer 'nope' to cut after; its layers are \['0', '1', '2', '3'\]"),
        ("{mod}:last_cut", "leaves the cloud nothing"),
        ("{mod}:not_a_pair", r"must return \(module, 'layer name'\)"),
        ("{mod}:batchnorm", "buffers"),
    ],
)
def test_refusals_say_what_is_wrong(user_module: str, model_id: str, message: str) -> None:
    with pytest.raises(ModelNotFound, match=message) as info:
        custom_model_spec(model_id.format(mod=user_module), input_shape=IMAGE, num_classes=10)
    assert isinstance(info.value, ConfigError)


def test_an_input_shape_the_model_cannot_take_is_refused(user_module: str) -> None:
    with pytest.raises(ModelNotFound, match="cannot take input shape"):
        custom_model_spec(f"{user_module}:mlp", input_shape=(1, 20, 20), num_classes=10)
    with pytest.raises(ModelNotFound, match="cannot take input shape"):
        custom_model_spec(EXAMPLE, input_shape=(6, 128), num_classes=7)  # IMU into a 2D CNN


def test_dataset_and_npz_take_a_custom_model(tmp_path: Path, user_module: str) -> None:
    name = write_images(tmp_path / "images.npz")
    spec = load_dataset(name).model_spec(EXAMPLE)
    assert (spec.input_shape, spec.num_classes, spec.cut_shape) == (IMAGE, 3, (8, 7, 7))
    assert spec.model_id == EXAMPLE
    imu = load_dataset("imu")
    with pytest.raises(ModelNotFound, match="cannot take input shape"):
        imu.model_spec(EXAMPLE)
    assert load_dataset(name).model_spec(f"{user_module}:mlp").cut_shape == (16,)
    from simultrain.shared.data.npz import load_npz

    assert load_npz(tmp_path / "images.npz", model_id=EXAMPLE).model_id == EXAMPLE
    with pytest.raises(InvalidDataset, match="cannot import"):
        load_npz(tmp_path / "images.npz", model_id="nowhere_xyz:build")


def test_fingerprint_lists_names_shapes_and_dtypes(user_module: str) -> None:
    example = custom_model_spec(EXAMPLE, input_shape=IMAGE, num_classes=10)
    fingerprint = architecture_fingerprint(example)
    assert len(fingerprint) == 64 and fingerprint == architecture_fingerprint(example)
    # Another class count, another parameter name layout or a built-in: another fingerprint.
    others = [
        custom_model_spec(EXAMPLE, input_shape=IMAGE, num_classes=9),
        custom_model_spec(
            "examples.tiny_mobilenet:build_explicit", input_shape=IMAGE, num_classes=10
        ),
        custom_model_spec(f"{user_module}:mlp", input_shape=IMAGE, num_classes=10),
        get_model_spec("mnist-cnn"),
    ]
    assert len({fingerprint, *(architecture_fingerprint(s) for s in others)}) == 5


def test_hello_carries_the_fingerprint_on_the_wire() -> None:
    hello = Hello(edge_id="e", model_id=EXAMPLE, cut_shape=(8, 7, 7), model_fingerprint="a" * 64)
    assert decode_frame(encode_frame(hello)) == hello
    plain = Hello(edge_id="e", model_id="imu-cnn1d", cut_shape=(32, 32))
    assert decode_frame(encode_frame(plain)).model_fingerprint is None


def test_the_example_trains_through_the_in_process_driver(tmp_path: Path) -> None:
    """Every frame through the real codec and runtimes, as in the services."""
    config = RunConfig(
        mode="simultrain",
        dataset=write_images(tmp_path / "images.npz"),
        model_id=EXAMPLE,
        steps=6,
        batch_size=16,
    )
    result = run_in_process(config)
    assert result.steps == 6 and result.samples == 6 * 16
    assert result.master_version == 2 * 6  # both stages applied for every batch
    assert np.isfinite(result.train_loss) and np.isfinite(result.test_loss)
