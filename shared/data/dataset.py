"""`Dataset`: one train/test split held in memory as numpy arrays."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simultrain.shared.data.errors import InvalidDataset
from simultrain.shared.models import ModelSpec, get_model_spec

__all__ = ["PARTITIONS", "Dataset"]

# How `Dataset.shard` deals training samples to edges (its docstring says exactly how).
PARTITIONS = ("auto", "groups", "iid", "label-skew")


def _read_only(array: NDArray[Any]) -> NDArray[Any]:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled train/test split.

    ``x_*`` are float32 ``(N, *input_shape)``, ``y_*`` int64 ``(N,)`` in ``[0, num_classes)``.
    The arrays are **read-only views**: loaded datasets are cached and shared in-process, so
    nobody may write into them. Batches from `BatchStream` and `eval_batches` are fresh,
    writable copies, ready for ``torch.from_numpy``; for a whole split use ``torch.tensor(x)``
    (``torch.from_numpy`` on a read-only array warns).

    ``groups_train`` (optional, int64 ``(N,)``) names the natural owner of each training sample
    (the IMU subject), which `shard` keeps together. ``model_id`` is the default model for this
    data. ``info`` carries loader-specific facts (normalisation statistics, options).
    """

    name: str
    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    num_classes: int
    model_id: str
    groups_train: NDArray[np.int64] | None = None
    seed: int = 0
    class_names: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if x.dtype != np.float32 or y.dtype != np.int64:
                raise InvalidDataset(
                    f"{self.name}: x_{split} must be float32 and y_{split} "
                    f"int64, got {x.dtype} and {y.dtype}"
                )
            if y.ndim != 1 or x.ndim < 2 or len(x) != len(y):
                raise InvalidDataset(
                    f"{self.name}: x_{split} {x.shape} and y_{split} "
                    f"{y.shape} do not describe the same samples"
                )
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise InvalidDataset(f"{self.name}: y_{split} outside [0, {self.num_classes})")
            object.__setattr__(self, f"x_{split}", _read_only(x))
            object.__setattr__(self, f"y_{split}", _read_only(y))
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise InvalidDataset(
                f"{self.name}: train samples {self.x_train.shape[1:]} and "
                f"test samples {self.x_test.shape[1:]} differ in shape"
            )
        if self.groups_train is not None:
            if self.groups_train.shape != self.y_train.shape:
                raise InvalidDataset(
                    f"{self.name}: groups_train {self.groups_train.shape} "
                    f"does not match y_train {self.y_train.shape}"
                )
            object.__setattr__(self, "groups_train", _read_only(self.groups_train))
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape (what the model's ``input_shape`` must be)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def model_spec(self, model_id: str | None = None) -> ModelSpec:
        """The split model to train on this data: ``model_id``, or the dataset's default.

        Raises `InvalidDataset` when the model does not take these samples or has fewer
        classes than the labels name, before anything is built.
        """
        spec = get_model_spec(model_id or self.model_id)
        if tuple(spec.input_shape) != self.input_shape or spec.num_classes < self.num_classes:
            raise InvalidDataset(
                f"model {spec.model_id} takes {list(spec.input_shape)} with "
                f"{spec.num_classes} classes; {self.name} has {list(self.input_shape)} with "
                f"{self.num_classes}"
            )
        return spec

    def shard(self, index: int, count: int, *, partition: str = "auto") -> Dataset:
        """The ``index``-th of ``count`` disjoint training shards that together cover all.

        ``partition`` says how the training samples are dealt (`PARTITIONS`); every one is a
        pure function of ``(seed, count)``, so each edge process computes its own shard and
        the in-process driver computes the same ones:

        - ``"auto"``: ``"groups"`` when the data names its groups (IMU subjects), else ``"iid"``.
        - ``"groups"`` (non-IID by owner — a subject is a natural edge device): with at most
          as many shards as groups, whole groups go round-robin to shards in sorted order.
          With more shards than groups, shard ``i`` holds part of group ``i mod G`` only (G
          groups, sorted): each group's samples are dealt by a seeded permutation into as
          many near-equal pieces as shards it serves. An edge still sees one subject only.
        - ``"iid"``: a seeded permutation cut into ``count`` contiguous, near-equal pieces.
        - ``"label-skew"`` (non-IID by label, McMahan et al. 2017 "pathological non-IID"): the
          samples are sorted by label (seeded order within a label) and cut into ``2·count``
          contiguous, near-equal slices; a seeded permutation deals two slices to each shard.
          A slice spans one label, or two where it straddles a label boundary, so a shard
          holds 1 to 4 labels and most of its samples in 1–2 of them (MNIST, 8 shards: 2–4
          labels, the largest 31–70 % of the shard; 32 shards: 1–3 labels).

        The test split is kept whole in every shard: each edge is evaluated on the same
        held-out data. Raises `InvalidDataset` for an unknown ``partition`` or a shard that
        would be empty, `ValueError` for an index outside ``[0, count)``.
        """
        if not 0 <= index < count:
            raise ValueError(f"shard index {index} not in [0, {count})")
        if partition not in PARTITIONS:
            raise InvalidDataset(f"unknown partition {partition!r}; known: {', '.join(PARTITIONS)}")
        if partition == "auto":
            partition = "iid" if self.groups_train is None else "groups"
        if partition == "groups":
            rows, how = self._group_rows(index, count)
        elif partition == "label-skew":
            rows, how = self._label_skew_rows(index, count)
        else:
            if count > len(self.y_train):
                raise InvalidDataset(f"{self.name}: {count} shards for {len(self.y_train)} samples")
            order = np.random.default_rng(self.seed).permutation(len(self.y_train))
            rows = np.sort(np.array_split(order, count)[index])
            how = f"{len(rows)} samples"
        return replace(
            self,
            name=f"{self.name}[{index}/{count}]",
            x_train=self.x_train[rows],
            y_train=self.y_train[rows],
            groups_train=None if self.groups_train is None else self.groups_train[rows],
            info={**self.info, "shard": (index, count), "shard_of": how, "partition": partition},
        )

    def check_shards(self, count: int, *, partition: str = "auto", batch_size: int = 1) -> None:
        """Refuse, with one line, a fleet of ``count`` edges this data cannot feed.

        Every shard must exist (`shard`) and fill at least one batch of ``batch_size``;
        callers check this before starting any process, so an impossible fleet never gets
        half started.
        """
        if count < 1:
            raise InvalidDataset(f"{self.name}: a fleet needs at least one edge, not {count}")
        for index in range(count):
            shard = self.shard(index, count, partition=partition)
            if len(shard.y_train) < batch_size:
                raise InvalidDataset(
                    f"{self.name}: shard {index} of {count} ({shard.info['partition']}) has "
                    f"{len(shard.y_train)} training samples, fewer than one batch of "
                    f"{batch_size}; use fewer edges"
                )

    def _group_rows(self, index: int, count: int) -> tuple[NDArray[np.intp], str]:
        if self.groups_train is None:
            raise InvalidDataset(f"{self.name}: partition 'groups' needs data with groups")
        groups = np.unique(self.groups_train)
        if count <= len(groups):
            mine = groups[index::count]
            return np.flatnonzero(np.isin(self.groups_train, mine)), f"groups {mine.tolist()}"
        group = groups[index % len(groups)]
        # Shards index, index + G, index + 2G, … share this group: as many pieces as those.
        pieces = len(range(index % len(groups), count, len(groups)))
        members = np.flatnonzero(self.groups_train == group)
        if pieces > len(members):
            raise InvalidDataset(
                f"{self.name}: {count} shards split group {int(group)} into {pieces} pieces "
                f"but it has only {len(members)} samples"
            )
        order = np.random.default_rng([self.seed, int(group)]).permutation(members)
        piece = index // len(groups)
        rows = np.sort(np.array_split(order, pieces)[piece])
        return rows, f"group {int(group)} piece {piece + 1}/{pieces}"

    def _label_skew_rows(self, index: int, count: int) -> tuple[NDArray[np.intp], str]:
        slices = 2 * count
        if slices > len(self.y_train):
            raise InvalidDataset(
                f"{self.name}: label-skew over {count} shards needs {slices} samples, "
                f"has {len(self.y_train)}"
            )
        rng = np.random.default_rng([self.seed, count])
        shuffled = rng.permutation(len(self.y_train))
        by_label = shuffled[np.argsort(self.y_train[shuffled], kind="stable")]
        cuts = np.array_split(by_label, slices)
        dealt = rng.permutation(slices)
        mine = dealt[2 * index : 2 * index + 2]
        rows = np.sort(np.concatenate([cuts[i] for i in mine]))
        labels = np.unique(self.y_train[rows]).tolist()
        return rows, f"{len(rows)} samples of labels {labels}"

    def eval_batches(
        self, split: str = "test", *, batch_size: int = 1024
    ) -> Iterator[tuple[NDArray[np.float32], NDArray[np.int64]]]:
        """The whole ``split`` ("train" or "test") in order, as writable batch copies."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        for start in range(0, len(y), batch_size):
            yield x[start : start + batch_size].copy(), y[start : start + batch_size].copy()

    def summary(self) -> str:
        """One line: sizes, shapes, classes, model, groups."""
        counts = np.bincount(self.y_train, minlength=self.num_classes)
        groups = (
            "" if self.groups_train is None else f", {len(np.unique(self.groups_train))} groups"
        )
        return (
            f"{self.name}: train {len(self.y_train)}, test {len(self.y_test)}, "
            f"sample {self.input_shape}, {self.num_classes} classes "
            f"(train per class {counts.min()}–{counts.max()}){groups}, "
            f"model {self.model_id}"
        )
