"""Edge CPU calibration: how much slower a Raspberry Pi 4 is than this machine (docs/BENCH.md).

The edge agent emulates a slow CPU by time dilation (``SIMULTRAIN_EDGE_SLOWDOWN`` = k: after
each compute section it sleeps (k − 1)× the section's measured duration). k is the ratio of
the same work on both machines. The published reference point for a Pi 4 is a ResNet-18
forward pass, batch 1, 3×224×224, with 4 threads: about 100 ms (``PI4_RESNET18_FORWARD_MS``).
torchvision is not a dependency, so :class:`ResNet18` below is the standard architecture
(He et al. 2016, table 1: 7×7/2 stem, max-pool, four stages of two basic blocks with 64, 128,
256, 512 channels, global pool, 1000-way linear; 11.7 M parameters, 1.8 GFLOP per image)
written out in plain torch. We time its forward here with the thread count the edge agent
uses and set ``k = 100 ms / measured``.

The measurement takes the *fastest* of repeated forwards after a warm-up: on a shared
machine other processes only ever add time, so the minimum is the best estimate of what this
CPU needs (a median taken under a neighbour's load once gave 60 ms instead of 32 ms, k = 1.7
instead of 3.1). The median is recorded beside it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "PI4_RESNET18_FORWARD_MS",
    "Calibration",
    "ResNet18",
    "calibrate",
    "slowdown_for",
]

PI4_RESNET18_FORWARD_MS = 100.0
"""Published Raspberry Pi 4 figure: ResNet-18 forward, batch 1, 224×224, 4 threads
(docs/BENCH.md)."""


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 224×224 ImageNet inputs, layer for layer as torchvision builds it."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        channels = 64
        for out_channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(
                    BasicBlock(channels, out_channels, stride),
                    BasicBlock(out_channels, out_channels, 1),
                )
            )
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.pool(self.stages(self.stem(x))).flatten(1)
        logits: Tensor = self.fc(features)
        return logits


@dataclass(frozen=True)
class Calibration:
    """One calibration: the forward time here and the slowdown it implies."""

    threads: int
    forward_ms: float  # the fastest of ``repeats``: what k is computed from
    forward_ms_median: float
    repeats: int
    reference_ms: float = PI4_RESNET18_FORWARD_MS

    @property
    def slowdown(self) -> float:
        return slowdown_for(self.forward_ms, reference_ms=self.reference_ms)

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "slowdown": round(self.slowdown, 3)}


def slowdown_for(measured_ms: float, *, reference_ms: float = PI4_RESNET18_FORWARD_MS) -> float:
    """k = reference / measured, never below 1 (a machine slower than a Pi is not sped up)."""
    if measured_ms <= 0:
        raise ValueError(f"measured forward time must be > 0 ms, not {measured_ms}")
    return max(1.0, reference_ms / measured_ms)


def calibrate(
    *, threads: int = 1, repeats: int = 30, warmup: int = 3, seed: int = 0
) -> Calibration:
    """Time ResNet-18's forward (batch 1, 224×224, eval mode, no autograd) with ``threads``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = ResNet18().eval()
        image = torch.randn(1, 3, 224, 224)
        times_ms: list[float] = []
        with torch.inference_mode():
            for index in range(warmup + repeats):
                started = time.perf_counter()
                model(image)
                elapsed_ms = (time.perf_counter() - started) * 1e3
                if index >= warmup:
                    times_ms.append(elapsed_ms)
    finally:
        torch.set_num_threads(previous)
    return Calibration(
        threads=threads,
        forward_ms=min(times_ms),
        forward_ms_median=statistics.median(times_ms),
        repeats=repeats,
    )
