"""Real IMU recordings: seglearn's shipped ``watch_dataset.npy`` (docs/DESIGN.md §10).

140 recordings of a wrist-worn watch (3-axis accelerometer + 3-axis gyroscope, 50 Hz) of
10 subjects doing 7 shoulder-rehabilitation exercises, one exercise per recording. The file is
read by path: importing seglearn would pull in pandas and scikit-learn for nothing.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simultrain.shared.data.dataset import Dataset
from simultrain.shared.data.errors import DatasetUnavailable, InvalidDataset
from simultrain.shared.models import canonical_model_id

__all__ = ["load_imu", "watch_path"]

SAMPLE_RATE_HZ = 50


def watch_path() -> Path:
    """Where seglearn keeps ``watch_dataset.npy``; `DatasetUnavailable` when not installed."""
    spec = importlib.util.find_spec("seglearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(
            "the IMU dataset ships with seglearn, which is not installed: "
            "pip install 'simultrain[data]' (or: pip install seglearn)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "watch_dataset.npy"
    if not path.is_file():
        raise DatasetUnavailable(f"seglearn is installed but {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def _read_watch() -> dict[str, Any]:
    path = watch_path()
    # The file is a pickled dict inside .npy; it ships with an installed package we trust.
    raw = np.load(path, allow_pickle=True).item()
    try:
        recordings = [np.asarray(x, dtype=np.float64) for x in raw["X"]]
        labels = np.asarray(raw["y"], dtype=np.int64)
        subjects = np.asarray(raw["subject"], dtype=np.int64)
        class_names = tuple(str(s) for s in raw["y_labels"])
        channels = tuple(str(s) for s in raw["X_labels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidDataset(f"{path}: unexpected layout ({exc})") from exc
    if not len(recordings) == len(labels) == len(subjects):
        raise InvalidDataset(f"{path}: X, y and subject differ in length")
    return {
        "recordings": recordings,
        "labels": labels,
        "subjects": subjects,
        "class_names": class_names,
        "channels": channels,
    }


def _windows(
    recordings: list[NDArray[np.float64]],
    labels: NDArray[np.int64],
    subjects: NDArray[np.int64],
    keep: NDArray[np.bool_],
    window: int,
    stride: int,
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
    xs, ys, gs = [], [], []
    for recording, label, subject, kept in zip(recordings, labels, subjects, keep, strict=True):
        if not kept or len(recording) < window:
            continue
        starts = np.arange(0, len(recording) - window + 1, stride)
        # (n_windows, window, channels) → channels first, as Conv1d wants.
        cut = np.stack([recording[s : s + window] for s in starts]).transpose(0, 2, 1)
        xs.append(cut)
        ys.append(np.full(len(starts), label, dtype=np.int64))
        gs.append(np.full(len(starts), subject, dtype=np.int64))
    channels = recordings[0].shape[1]
    if not xs:
        return (
            np.empty((0, channels, window), np.float32),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
        )
    return (np.concatenate(xs).astype(np.float32), np.concatenate(ys), np.concatenate(gs))


def load_imu(
    seed: int = 0,
    *,
    window: int = 128,
    stride: int = 64,
    test_subjects: tuple[int, ...] = (9, 10),
) -> Dataset:
    """Windows of ``window`` samples every ``stride`` samples, split by subject.

    Windows never cross recordings and take the recording's exercise as label. Training
    subjects are all but ``test_subjects``; ``groups_train`` is the subject of each window.
    Each channel is standardised with the mean and standard deviation of the *training*
    windows only (stored in ``info``). Defaults give 2832 training and 773 test windows.
    ``seed`` is accepted for uniformity; nothing here is random.
    """
    if window < 1 or stride < 1:
        raise InvalidDataset(f"imu: window and stride must be ≥ 1, got {window}, {stride}")
    raw = _read_watch()
    subjects = raw["subjects"]
    test_set = {int(s) for s in test_subjects}
    unknown = test_set - {int(s) for s in subjects}
    if unknown or not test_set:
        raise InvalidDataset(
            f"imu: test_subjects {sorted(test_set)} must be a non-empty "
            f"subset of {sorted({int(s) for s in subjects})}"
        )
    is_test = np.isin(subjects, sorted(test_set))
    x_train, y_train, g_train = _windows(
        raw["recordings"], raw["labels"], subjects, ~is_test, window, stride
    )
    x_test, y_test, _ = _windows(
        raw["recordings"], raw["labels"], subjects, is_test, window, stride
    )
    if len(y_train) == 0 or len(y_test) == 0:
        raise InvalidDataset(f"imu: window {window} leaves an empty train or test split")
    mean = x_train.mean(axis=(0, 2), dtype=np.float64)
    std = x_train.std(axis=(0, 2), dtype=np.float64)
    std[std == 0] = 1.0

    def scale(x: NDArray[np.float32]) -> NDArray[np.float32]:
        scaled: NDArray[np.float32] = ((x - mean[None, :, None]) / std[None, :, None]).astype(
            np.float32
        )
        return scaled

    channels = x_train.shape[1]
    num_classes = len(raw["class_names"])
    return Dataset(
        name="imu",
        x_train=scale(x_train),
        y_train=y_train,
        x_test=scale(x_test),
        y_test=y_test,
        num_classes=num_classes,
        model_id=canonical_model_id("imu-cnn1d", (channels, window), num_classes),
        groups_train=g_train,
        seed=seed,
        class_names=raw["class_names"],
        info={
            "channels": raw["channels"],
            "channel_mean": tuple(mean.tolist()),
            "channel_std": tuple(std.tolist()),
            "sample_rate_hz": SAMPLE_RATE_HZ,
            "window": window,
            "stride": stride,
            "test_subjects": tuple(sorted(test_set)),
        },
    )
