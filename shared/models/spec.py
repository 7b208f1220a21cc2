"""`ModelSpec` (what a model is) and `SplitModel` (one built instance, cut in two).

A spec is pure description: ids, per-sample shapes, and a function that makes the two stages.
`ModelSpec.build(seed)` turns it into weights. Initialisation is deterministic for a seed and
never touches torch's global RNG: the stages are first built on the ``meta`` device (no
storage, no random draws), then materialised empty on the CPU and filled from a local
`torch.Generator`. Services on either side of the link therefore agree on the initial master
weights from the model id and seed alone, whatever else the process has drawn before.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["ModelSpec", "SplitModel", "StageFactory", "init_parameters"]

#: Makes ``(edge_stage, cloud_stage)`` for a per-sample input shape and a class count.
#: It is called under ``torch.device("meta")``, so it must not read parameter values.
StageFactory = Callable[[tuple[int, ...], int], tuple[nn.Module, nn.Module]]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its shapes and how to build it.

    ``input_shape`` and ``cut_shape`` are per sample (no batch dimension): the edge stage maps
    ``(B, *input_shape)`` to ``(B, *cut_shape)`` and the cloud stage maps that to
    ``(B, num_classes)`` logits. ``cut_shape`` is what the protocol validates activations and
    cut gradients against.
    """

    model_id: str
    input_shape: tuple[int, ...]
    cut_shape: tuple[int, ...]
    num_classes: int
    make_stages: StageFactory = field(repr=False, compare=False)
    description: str = ""

    @property
    def input_numel(self) -> int:
        """Values per input sample."""
        return math.prod(self.input_shape)

    @property
    def cut_numel(self) -> int:
        """Values per sample crossing the link (activation up, cut gradient down)."""
        return math.prod(self.cut_shape)

    def build(self, seed: int) -> SplitModel:
        """Build both stages with parameters drawn from ``seed`` (bit-identical per seed)."""
        with torch.device("meta"):
            edge_stage, cloud_stage = self.make_stages(self.input_shape, self.num_classes)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        # One generator, edge stage first: the cloud-stage draws depend on the edge stage's
        # size, which is fine because a model id fixes both.
        edge_stage = init_parameters(edge_stage.to_empty(device="cpu"), generator)
        cloud_stage = init_parameters(cloud_stage.to_empty(device="cpu"), generator)
        return SplitModel(edge_stage=edge_stage, cloud_stage=cloud_stage, spec=self)


@dataclass(eq=False)
class SplitModel:
    """One model instance cut at the spec's cut layer.

    The two stages own all parameters; `full` wraps the very same modules, so training the
    full model (centralized, syncsgd, fedavg baselines) updates the stages too.
    """

    edge_stage: nn.Module
    cloud_stage: nn.Module
    spec: ModelSpec

    def full(self) -> nn.Sequential:
        """``nn.Sequential(edge_stage, cloud_stage)`` sharing this model's parameters.

        Its state-dict keys are prefixed ``edge_stage.`` and ``cloud_stage.``.
        """
        return nn.Sequential(OrderedDict(edge_stage=self.edge_stage, cloud_stage=self.cloud_stage))


# Modules whose parameters `init_parameters` knows how to draw; anything else with its own
# parameters is refused rather than left as uninitialised memory from `to_empty`.
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_AFFINE_NORMS = (nn.GroupNorm, nn.LayerNorm)


def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Fill every parameter of ``module`` from ``generator``, in ``named_modules`` order.

    The distributions are PyTorch's defaults (Kaiming-uniform with a=√5 for weights,
    U(±1/√fan_in) for biases, ones and zeros for norms), only drawn from a local generator.
    Modules with buffers (BatchNorm's running statistics) are refused: they would have to be
    kept in step across the edge replica and the master, which the protocol does not carry.
    """
    for name, sub in module.named_modules():
        if any(True for _ in sub.buffers(recurse=False)):
            raise TypeError(
                f"{name or type(module).__name__}: modules with buffers "
                f"({type(sub).__name__}) cannot be split-trained here"
            )
        own = dict(sub.named_parameters(recurse=False))
        if not own:
            continue
        with torch.no_grad():
            if isinstance(sub, _WEIGHTED):
                nn.init.kaiming_uniform_(sub.weight, a=math.sqrt(5), generator=generator)
                if sub.bias is not None:
                    fan_in = nn.init._calculate_fan_in_and_fan_out(sub.weight)[0]
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(sub.bias, -bound, bound, generator=generator)
            elif isinstance(sub, _AFFINE_NORMS):
                if sub.weight is not None:
                    nn.init.ones_(sub.weight)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)
            else:
                raise TypeError(
                    f"{name}: no deterministic initialiser for "
                    f"{type(sub).__name__} parameters {sorted(own)}"
                )
    return module
