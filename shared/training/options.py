"""The run configuration's option types: the optimizer and the codecs, as plain data.

They are part of the run configuration (`RunConfig.optimizer`, `RunConfig.codecs`; each field
is a flat run key, ``optimizer_<field>`` and ``<field>_codec``), which the coordinator
validates without training anything. So this module imports no torch: an optimizer is
built from its options only where a stage is trained (`OptimizerConfig.build`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from simultrain.shared.errors import ConfigError
from simultrain.shared.protocol.tensorcodec import Codec
from simultrain.shared.training.keys import Key

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = ["Codecs", "OptimizerConfig"]


@dataclass(frozen=True, slots=True)
class OptimizerConfig:
    """One optimizer family for every mode (baselines are never strawmen: docs/STALENESS.md).

    ``cloud_momentum`` overrides the cloud stage's momentum: a cloud stage updated at once
    with high momentum over-corrects for an edge that answers late (docs/STALENESS.md).
    """

    # Each field is a flat run configuration key ``optimizer_<field>`` (shared/training/keys.py).
    name: Annotated[Literal["sgd", "adam"], Key("Optimizer family.")] = "sgd"
    lr: Annotated[float, Key("Learning rate.", gt=0)] = 0.05
    momentum: Annotated[float, Key("SGD momentum.", ge=0, lt=1)] = 0.0
    cloud_momentum: Annotated[
        float | None, Key("Cloud-stage momentum override (default: momentum).", ge=0, lt=1)
    ] = None
    weight_decay: Annotated[float, Key("Weight decay.", ge=0)] = 0.0

    def build(
        self, params: Sequence[Tensor], *, stage: Literal["edge", "cloud", "full"]
    ) -> torch.optim.Optimizer:
        """The torch optimizer of one stage's parameters (``cloud``: with ``cloud_momentum``)."""
        import torch  # here, not at the top: validating a configuration trains nothing

        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.name == "sgd":
            momentum = self.momentum
            if stage == "cloud" and self.cloud_momentum is not None:
                momentum = self.cloud_momentum
            return torch.optim.SGD(
                params, lr=self.lr, momentum=momentum, weight_decay=self.weight_decay
            )
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ConfigError(f"unknown optimizer {self.name!r}; choose sgd or adam")


_CODECS = tuple(codec.value for codec in Codec)


@dataclass(frozen=True, slots=True)
class Codecs:
    """Which tensor codec each kind of payload travels with (PROTOCOL.md §4.1)."""

    # Each field is a flat run configuration key ``<field>_codec`` (``topk_ratio`` itself).
    act: Annotated[str, Key("Codec for activations (edge → cloud).", choices=_CODECS)] = "lz4"
    grad: Annotated[str, Key("Codec for cut-layer gradients.", choices=_CODECS)] = "lz4"
    delta: Annotated[str, Key("Codec for weight deltas (cloud → edge).", choices=_CODECS)] = "lz4"
    egrad: Annotated[
        str, Key("Codec for edge-stage gradients (edge → cloud).", choices=_CODECS)
    ] = "lz4"
    topk_ratio: Annotated[float, Key("Share of entries topk keeps.", gt=0, le=1)] = 0.1
