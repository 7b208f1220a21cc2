"""The built-in split models.

Design rules shared by all three:
- No BatchNorm. Its running statistics are buffers that the edge replica and the cloud master
  would have to keep in step, and under staleness the batch statistics of a stale replica
  differ from the master's. Plain ReLU conv stacks train well at these sizes.
- The cut sits where the activation is small, because it crosses the link twice per step
  (activation up, cut gradient down): after pooling, never before it.
- Small enough for a Raspberry-Pi-class edge: the edge stages are a few hundred kFLOP per
  sample (IMU) to a few MFLOP per clip frame (video).
"""

from __future__ import annotations

import torch
from torch import nn

from simultrain.shared.models.registry import register_model

__all__ = ["FrameWise", "TemporalHead"]


class FrameWise(nn.Module):
    """Apply a per-image module to every frame: ``(B, T, *frame) → (B, T, *out)``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        batch, frames = clips.shape[0], clips.shape[1]
        out: torch.Tensor = self.inner(clips.reshape(batch * frames, *clips.shape[2:]))
        return out.reshape(batch, frames, *out.shape[1:])


class TemporalHead(nn.Module):
    """``(B, T, F)`` per-frame features → temporal conv → mean over time → logits."""

    def __init__(self, features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.temporal = nn.Conv1d(features, hidden, kernel_size=3, padding=1)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, frame_features: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.temporal(frame_features.transpose(1, 2)))
        logits: torch.Tensor = self.classifier(h.mean(dim=2))
        return logits


@register_model(
    "imu-cnn1d",
    input_shape=(6, 128),
    num_classes=7,
    description="1D CNN for multi-channel IMU windows; cut after two conv blocks",
)
def imu_cnn1d(input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Two conv blocks on the edge (C×T → 32×T/4), conv + global pool + linear in the cloud."""
    channels = input_shape[0]
    edge_stage = nn.Sequential(
        nn.Conv1d(channels, 32, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(32, 32, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
    )
    cloud_stage = nn.Sequential(
        nn.Conv1d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )
    return edge_stage, cloud_stage


@register_model(
    "mnist-cnn",
    input_shape=(1, 28, 28),
    num_classes=10,
    description="small 2D CNN for C×H×W images; cut after the first conv block",
)
def mnist_cnn(input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, nn.Module]:
    """One conv block on the edge (C×28×28 → 16×14×14), two convs + linear in the cloud."""
    channels = input_shape[0]
    edge_stage = nn.Sequential(
        nn.Conv2d(channels, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    cloud_stage = nn.Sequential(
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )
    return edge_stage, cloud_stage


@register_model(
    "video-cnn",
    input_shape=(8, 1, 64, 64),
    num_classes=10,
    description="per-frame strided CNN (16x spatial downsampling) on the edge, "
    "temporal conv + pooling in the cloud; input T×C×H×W",
)
def video_cnn(input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Edge: per frame C×H×W → 16×H/16×W/16 (8×64×64 → 8×16×4×4, 16x fewer values).

    Cloud: per-frame conv + global spatial pooling, temporal conv over the T frame features,
    mean over time, linear classifier.
    """
    channels = input_shape[1]
    edge_stage = FrameWise(
        nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=5, stride=2, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
    )
    cloud_stage = nn.Sequential(
        FrameWise(
            nn.Sequential(
                nn.Conv2d(16, 64, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.AdaptiveMaxPool2d(1),
                nn.Flatten(),
            )
        ),
        TemporalHead(64, 64, num_classes),
    )
    return edge_stage, cloud_stage


@register_model(
    "imu-thin",
    input_shape=(6, 128),
    num_classes=7,
    description="1D CNN with a thin edge stage and a 16×16 cut (3x smaller than the window), "
    "two convs in the cloud; the paper's payload regime (cut < model)",
)
def imu_thin(input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Edge: C×T → 16×T/8 (6×128 → 16×16: 256 values, 1 KiB per window in fp32).

    The split the paper's payload table describes: per batch of 32 the cut activation is
    32 KiB and the whole model 71 KiB (1.8 k parameters on the edge, 16 k in the cloud), so
    activations are smaller than the weights SyncSGD moves, and most of the compute sits in
    the cloud. ``imu-cnn1d`` is the opposite regime (a 32×32 cut larger than the window).
    """
    channels = input_shape[0]
    edge_stage = nn.Sequential(
        nn.Conv1d(channels, 16, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(16, 16, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(4),
    )
    cloud_stage = nn.Sequential(
        nn.Conv1d(16, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv1d(64, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )
    return edge_stage, cloud_stage
