"""`load_dataset`: one entry point for every data source, cached in-process."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from simultrain.shared.data import imu, mnist
from simultrain.shared.data.dataset import Dataset
from simultrain.shared.data.errors import InvalidDataset, UnknownDataset
from simultrain.shared.data.imu import load_imu
from simultrain.shared.data.mnist import load_mnist
from simultrain.shared.data.npz import load_npz
from simultrain.shared.data.video import load_video

__all__ = ["list_datasets", "load_dataset", "release_caches"]

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "imu": load_imu,
    "mnist": load_mnist,
    "video": load_video,
}
_NPZ = "npz:"


def list_datasets() -> list[str]:
    """Names `load_dataset` takes (``npz:PATH`` stands for any file)."""
    return [*_LOADERS, _NPZ + "PATH"]


def load_dataset(name: str, *, seed: int = 0, **opts: Any) -> Dataset:
    """Load ``imu``, ``mnist``, ``video`` or ``npz:PATH`` with loader options ``opts``.

    Results are cached per ``(name, seed, opts)`` — and for ``npz:`` the file's size and
    modification time — so repeated loads in one process are free; the arrays are read-only.
    Options per dataset: see `load_imu`, `load_mnist`, `load_video`, `load_npz`.
    """
    if name.startswith(_NPZ):
        loader: Callable[..., Dataset] = load_npz
        path = Path(name[len(_NPZ) :]).expanduser()
        if not name[len(_NPZ) :]:
            raise UnknownDataset("npz: give a path, as in 'npz:/data/mine.npz'")
        try:
            stat = path.stat()
            version: Hashable = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        except OSError:
            version = str(path)  # load_npz reports the missing file
        args: tuple[Any, ...] = (path,)
    elif name in _LOADERS:
        loader, version, args = _LOADERS[name], None, ()
    else:
        raise UnknownDataset(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    defaults = {
        p.name: p.default
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(opts) - set(defaults))
    if unknown:
        raise UnknownDataset(
            f"dataset {name!r} takes no option(s) {unknown}; options: {sorted(defaults)}"
        )
    try:
        # Defaults filled in, so that spelling out a default hits the same cache entry.
        key = tuple(sorted((k, _hashable(v)) for k, v in {**defaults, **opts}.items()))
    except TypeError as exc:
        raise InvalidDataset(
            f"dataset {name!r}: option values must be plain values ({exc})"
        ) from exc
    return _load_cached(name, version, seed, key, loader, args)


def _hashable(value: Any) -> Hashable:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    hash(value)
    return value  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=16)
def _load_cached(
    name: str,
    version: Hashable,
    seed: int,
    opts: tuple[tuple[str, Hashable], ...],
    loader: Callable[..., Dataset],
    args: tuple[Any, ...],
) -> Dataset:
    del name, version  # part of the cache key only
    return loader(*args, seed=seed, **dict(opts))


def release_caches() -> None:
    """Forget every loaded dataset (the in-process caches of `load_dataset` and the raw files).

    For a process that keeps one shard: an edge copies its shard's training samples and
    releases the rest, so that a fleet of edge processes on one machine holds one copy of the
    data in all rather than one each (MNIST: ~220 MB of float32 per process otherwise).
    A later `load_dataset` reads the files again.
    """
    _load_cached.cache_clear()
    mnist.read_digits.cache_clear()
    mnist._normalised.cache_clear()
    imu._read_watch.cache_clear()
