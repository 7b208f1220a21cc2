"""The fleet's reference: centralized training on one shuffled stream of all its data.

docs/FLEET.md, "The yardstick". A user who could ship every edge's data to the cloud would
train on one seeded shuffle of all of it: every batch a mix of subjects or labels. That —
*pooled* training — is what a fleet is measured against. The other "centralized" run, fed
edge by edge (each cloud step one edge's batch, round robin), keeps every step's data as
skewed as the edge it came from: it is the diagnostic that separates what the fleet loses to
the *order* of its data from what it loses to *staleness* (docs/FLEET.md, "Decomposition").

The pooled run takes the same samples (the union of the fleet's shards), the same optimizer,
batch size and number of batches (``steps × edges``) as the fleet it is the reference of: an
edge of a ``pooled`` run streams this union with the run's seed (shared/training/assembly.py),
and the in-process driver runs one such edge for ``steps × edges`` batches.
"""

from __future__ import annotations

from simultrain.shared.data import Dataset
from simultrain.shared.errors import ConfigError

__all__ = ["pooled_training_set"]


def pooled_training_set(dataset: Dataset, edges: int, *, partition: str) -> Dataset:
    """All the training samples ``edges`` edges hold between them, as one data set.

    `Dataset.shard` deals disjoint shards that together cover the training split, so their
    union is that split: it is returned as it is (same rows, same order), which makes the
    pooled run of a fleet the same run as centralized training of one edge on all the data.
    Checked, not assumed: shards that do not add up to the split raise `ConfigError`.
    """
    if edges < 1:
        raise ConfigError(f"a fleet has at least one edge, not {edges}")
    if edges == 1:
        return dataset
    held = sum(len(dataset.shard(i, edges, partition=partition).y_train) for i in range(edges))
    if held != len(dataset.y_train):
        raise ConfigError(
            f"{dataset.name}: {edges} shards ({partition}) hold {held} of "
            f"{len(dataset.y_train)} training samples; pooled training needs them all"
        )
    return dataset
