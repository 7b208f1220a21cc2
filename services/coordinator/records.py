"""What the coordinator records: the run configuration, clouds and edges.

Records are immutable values; a store keeps the latest value per id and updates are new
values (``dataclasses.replace``). Version counters are "as last reported" by the cloud
(master version ``v_c``) and the edge (replica version ``v_e``): versions are the backbone
(docs/DESIGN.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# The run configuration as the coordinator's API, store and settings carry it (docs/DESIGN.md
# §2): the shared `RunConfig` in its flat wire form, documented by the JSON
# schema its declaration generates — no key is listed here.
from simultrain.shared.run_settings import RunConfigField, run_config_field
from simultrain.shared.training.config import RunConfig

__all__ = ["CloudRecord", "EdgeRecord", "RunConfig", "RunConfigField", "Status", "run_config_field"]


class Status(StrEnum):
    UP = "up"
    DOWN = "down"  # silent past the heartbeat timeout: a failure
    FINISHED = "finished"  # an edge that trained its steps and said so: not a failure


@dataclass(frozen=True, slots=True)
class CloudRecord:
    cloud_id: str
    url: str
    status: Status
    last_heartbeat: float
    registered_at: float
    master_version: int = 0
    connected_edges: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EdgeRecord:
    edge_id: str
    cloud_id: str
    status: Status
    last_heartbeat: float
    registered_at: float
    # Registration order among live records (lowest free), used to stagger reconciliation
    # when the edge gives no shard.
    ordinal: int
    reconcile_offset: int
    name: str | None = None
    shard_index: int | None = None
    shard_count: int | None = None
    edge_version: int = 0
    step: int = 0
