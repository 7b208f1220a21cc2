"""A small MobileNet-style image classifier, cut narrow, as a user's own model.

Train it on any ``npz`` image data (``X``: N×C×H×W, ``y``: labels; shared/data/npz.py)::

    python -m examples.mnist_npz /tmp/mnist.npz           # MNIST as an npz file
    simultrain demo --dataset npz:/tmp/mnist.npz --model examples.tiny_mobilenet:build

MobileNet (Howard et al. 2017) replaces each conv by a depthwise 3×3 conv (one filter per
channel, ``groups=channels``) and a pointwise 1×1 conv that mixes channels: about k² times
fewer multiply-adds than a full k×k conv, which suits a Raspberry-Pi-class edge. Two changes
for split training (shared/models/zoo.py says why): GroupNorm instead of BatchNorm, whose
running statistics are buffers the edge replica and the master would have to keep in step;
and the cut after a 1×1 projection down to 8 channels at a quarter of the resolution, so
the activation that crosses the link twice per step is small (8×7×7 = 392 values for a
28×28 image, half the input).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["build", "build_explicit", "separable"]


def separable(channels_in: int, channels_out: int, *, stride: int = 1) -> nn.Sequential:
    """Depthwise 3×3 (per channel, optionally strided) then pointwise 1×1, each normed."""
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_in, 3, stride=stride, padding=1, groups=channels_in),
        nn.GroupNorm(1, channels_in),
        nn.ReLU(),
        nn.Conv2d(channels_in, channels_out, 1),
        nn.GroupNorm(1, channels_out),
        nn.ReLU(),
    )


def build(input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, str]:
    """Tiny MobileNet for C×H×W images, cut after ``cut`` (8 channels at H/4 × W/4)."""
    channels = input_shape[0]
    model = nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.ReLU()),
            block1=separable(16, 32, stride=2),
            cut=nn.Conv2d(32, 8, 1),  # the narrow projection whose output crosses the link
            block2=separable(8, 64),
            block3=separable(64, 128, stride=2),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(128, num_classes),
        )
    )
    return model, "cut"


def build_explicit(input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, nn.Module]:
    """The same model given as ``(edge_stage, cloud_stage)`` rather than a layer name."""
    model, _ = build(input_shape, num_classes)
    layers = list(model.children())
    return nn.Sequential(*layers[:3]), nn.Sequential(*layers[3:])
