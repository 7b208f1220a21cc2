"""What the coordinator records: the run configuration, clouds and edges.

Records are immutable values; a store keeps the latest value per id and updates are new
values (``dataclasses.replace``). Version counters are "as last reported" by the cloud
(master version ``v_c``) and the edge (replica version ``v_e``); SPEC.md "Version counters
are the backbone".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from simultrain.shared.errors import ConfigError
from simultrain.shared.training.config import RunConfig

__all__ = ["CloudRecord", "EdgeRecord", "RunConfig", "RunConfigField", "Status", "run_config_field"]


class Status(StrEnum):
    UP = "up"
    DOWN = "down"


def _validator(cls: type[RunConfig]) -> PlainValidator:
    def validate(value: object) -> RunConfig:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"run configuration: expected an object, got {type(value).__name__}")
        try:
            return cls.from_mapping(value, driver=False)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    return PlainValidator(validate, json_schema_input_type=dict[str, Any])


def _wire(config: RunConfig) -> dict[str, Any]:
    return config.to_mapping()


# The run configuration as the coordinator's API, store and settings carry it (SPEC.md,
# issue 3 item 3): the shared `RunConfig` itself, validated from its flat wire form
# (`RunConfig.from_mapping`, without the driver's own keys; a `ConfigError` naming the key
# becomes a 422), serialised to it (`RunConfig.to_mapping`) and documented by the JSON schema
# its declaration generates — no key is listed here.
RunConfigField = Annotated[
    RunConfig,
    _validator(RunConfig),
    PlainSerializer(_wire, return_type=dict[str, Any]),
    WithJsonSchema(RunConfig.json_schema()),
]


def run_config_field(cls: type[RunConfig]) -> Any:
    """`RunConfigField` for ``cls``, a `RunConfig` with more keys (how a key added to the
    shared declaration reaches the API is tested with one)."""
    return Annotated[
        cls,
        _validator(cls),
        PlainSerializer(_wire, return_type=dict[str, Any]),
        WithJsonSchema(cls.json_schema()),
    ]


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
