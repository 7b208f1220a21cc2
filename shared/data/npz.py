"""User data from a ``.npz`` file: bring your own ``X`` and ``y``.

Arrays: ``X`` (N, *sample_shape) numeric and ``y`` (N,) integer class labels ≥ 0; optionally
``X_test`` and ``y_test`` (both or neither), otherwise a seeded, stratified 80/20 split. The file
is opened with ``allow_pickle=False``: a data file never gets to run code.

The model is the first registered family that takes the sample shape (see
`simultrain.shared.models.find_model_for_input`): ``(C, T)`` → ``imu-cnn1d`` (any C, T ≥ 4;
exactly ``imu-cnn1d`` for 6×128 with 7 classes, else e.g. ``imu-cnn1d-3x256-c5``),
``(C, H, W)`` → ``mnist-cnn``, ``(T, C, H, W)`` → ``video-cnn``. Pass ``model_id=`` to choose;
it must take the sample shape and have at least as many outputs as the data has classes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simultrain.shared.data.dataset import Dataset
from simultrain.shared.data.errors import DatasetUnavailable, InvalidDataset
from simultrain.shared.models import ModelNotFound, find_model_for_input, get_model_spec

__all__ = ["load_npz"]


def _features(name: str, array: NDArray[Any], where: str) -> NDArray[np.float32]:
    if array.dtype.kind not in "iuf" or array.ndim < 2:
        raise InvalidDataset(
            f"{where}: {name} must be a real numeric array of shape "
            f"(N, *sample_shape), got {array.dtype} {array.shape}"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as inf below
        x = array.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))[0])
        raise InvalidDataset(
            f"{where}: {name} has {int(bad.sum())} non-finite values "
            f"(NaN/Inf, or too large for float32), first in sample {first}"
        )
    return x


def _labels(name: str, array: NDArray[Any], where: str) -> NDArray[np.int64]:
    if array.ndim != 1:
        raise InvalidDataset(f"{where}: {name} must be 1-d (N,), got shape {array.shape}")
    if array.dtype.kind in "iu":
        y = array.astype(np.int64)
    elif array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.rint(array)):
        y = array.astype(np.int64)  # whole-number floats, as some exporters write them
    else:
        raise InvalidDataset(
            f"{where}: {name} must hold integer class labels, got dtype {array.dtype}"
        )
    if len(y) and y.min() < 0:
        raise InvalidDataset(f"{where}: {name} has negative labels; classes are 0..K-1")
    return y


def _read(path: Path) -> dict[str, NDArray[Any]]:
    if not path.is_file():
        raise DatasetUnavailable(f"npz: no such file {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise InvalidDataset(f"{path}: {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(f"{path}: not a readable .npz file ({exc})") from exc


def _stratified_split(
    y: NDArray[np.int64], test_fraction: float, seed: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        # At least one test sample per class that has two or more.
        held_out = max(round(len(members) * test_fraction), 1 if len(members) > 1 else 0)
        test[members[:held_out]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def load_npz(
    path: str | Path,
    seed: int = 0,
    *,
    model_id: str | None = None,
    test_fraction: float = 0.2,
) -> Dataset:
    """Load and validate ``path``; every problem raises `InvalidDataset` saying what and where."""
    where = str(path)
    arrays = _read(Path(path))
    missing = [key for key in ("X", "y") if key not in arrays]
    if missing:
        raise InvalidDataset(
            f"{where}: missing array(s) {missing}; found {sorted(arrays)} "
            "(need X and y, optionally X_test and y_test)"
        )
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise InvalidDataset(f"{where}: give both X_test and y_test, or neither")
    x = _features("X", arrays["X"], where)
    y = _labels("y", arrays["y"], where)
    if len(x) != len(y):
        raise InvalidDataset(f"{where}: X has {len(x)} samples but y has {len(y)}")
    if "X_test" in arrays:
        x_test = _features("X_test", arrays["X_test"], where)
        y_test = _labels("y_test", arrays["y_test"], where)
        if len(x_test) != len(y_test):
            raise InvalidDataset(
                f"{where}: X_test has {len(x_test)} samples but y_test has {len(y_test)}"
            )
        if x_test.shape[1:] != x.shape[1:]:
            raise InvalidDataset(
                f"{where}: X_test samples {x_test.shape[1:]} differ from X samples {x.shape[1:]}"
            )
        x_train, y_train = x, y
    else:
        if not 0.0 < test_fraction < 1.0:
            raise InvalidDataset(f"{where}: test_fraction must be in (0, 1), got {test_fraction}")
        train_rows, test_rows = _stratified_split(y, test_fraction, seed)
        x_train, y_train, x_test, y_test = x[train_rows], y[train_rows], x[test_rows], y[test_rows]
    if len(y_train) == 0 or len(y_test) == 0:
        raise InvalidDataset(
            f"{where}: empty train or test split ({len(y_train)} / {len(y_test)} samples)"
        )
    num_classes = max(int(y_train.max()), int(y_test.max())) + 1
    if num_classes < 2:
        raise InvalidDataset(f"{where}: labels name only one class")
    sample_shape = tuple(int(d) for d in x.shape[1:])
    try:
        if model_id is None:
            spec = find_model_for_input(sample_shape, num_classes)
        else:
            spec = get_model_spec(model_id, input_shape=sample_shape, num_classes=num_classes)
            if spec.input_shape != sample_shape or spec.num_classes < num_classes:
                raise InvalidDataset(
                    f"{where}: model {model_id!r} takes {spec.input_shape} samples and "
                    f"{spec.num_classes} classes; the data has {sample_shape} and {num_classes}"
                )
    except ModelNotFound as exc:
        raise InvalidDataset(f"{where}: {exc}; reshape X or pass model_id=") from exc
    return Dataset(
        name=f"npz:{where}",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        model_id=spec.model_id,
        seed=seed,
        info={"path": where, "given_test_split": "X_test" in arrays},
    )
