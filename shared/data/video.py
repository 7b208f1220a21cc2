"""Synthetic moving-digit video built on real MNIST digits.

Each clip is ``frames`` frames of ``height × width`` pixels: one MNIST digit (the label) moves
at a constant random velocity and bounces off the walls; optionally a second, dimmer digit
(a distractor of any class) moves independently, so the label is "the bright digit" rather
than "any ink". Training clips use MNIST training digits, test clips MNIST test digits.

The test clips depend only on the shape options, not on ``seed``: runs with different seeds
are evaluated on the same clips, as with the other datasets' fixed test sets.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from simultrain.shared.data.dataset import Dataset
from simultrain.shared.data.errors import InvalidDataset
from simultrain.shared.data.mnist import read_digits
from simultrain.shared.models import canonical_model_id

__all__ = ["load_video", "render_clips"]

DIGIT = 28
_TEST_STREAM = 0x7E57  # seeds the fixed test clips


def render_clips(
    digits: NDArray[np.uint8],
    count: int,
    *,
    frames: int,
    height: int,
    width: int,
    distractor: float,
    rng: np.random.Generator,
) -> tuple[NDArray[np.uint8], NDArray[np.intp]]:
    """``count`` clips as uint8 ``(count, frames, height, width)`` and the digit index of each.

    Positions follow ``p(t) = p0 + v·t`` folded back into ``[0, L]`` (a triangle wave), which
    is exactly a bounce off each wall; speeds are 1–3 px per frame in a random direction.
    """
    canvas = np.zeros((count, frames, height, width), dtype=np.uint8)
    chosen = rng.integers(0, len(digits), size=count)
    layers = [(chosen, 1.0)]
    if distractor > 0:
        layers.append((rng.integers(0, len(digits), size=count), distractor))
    room = np.array([height - DIGIT, width - DIGIT], dtype=np.float64)
    steps = np.arange(frames, dtype=np.float64)
    offsets = np.arange(DIGIT)
    clip = np.arange(count)[:, None, None]
    for which, intensity in layers:
        start = rng.uniform(0.0, 1.0, size=(count, 2)) * room
        angle = rng.uniform(0.0, 2 * np.pi, size=count)
        speed = rng.uniform(1.0, 3.0, size=count)
        velocity = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)
        path = start[:, None, :] + velocity[:, None, :] * steps[None, :, None]  # (N, T, 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            folded = np.where(room > 0, np.mod(path, 2 * np.maximum(room, 1)), 0.0)
        position = np.rint(np.where(folded > room, 2 * room - folded, folded)).astype(np.intp)
        sprite = (digits[which].astype(np.float32) * np.float32(intensity)).astype(np.uint8)
        for t in range(frames):
            rows = position[:, t, 0][:, None, None] + offsets[None, :, None]
            cols = position[:, t, 1][:, None, None] + offsets[None, None, :]
            frame = canvas[:, t]
            frame[clip, rows, cols] = np.maximum(frame[clip, rows, cols], sprite)
    return canvas, chosen


def _clips(
    split: str,
    count: int,
    seed: int,
    frames: int,
    height: int,
    width: int,
    distractor: float,
    source: str,
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    (train_images, train_labels, test_images, test_labels), _ = read_digits(source)
    images, labels = (
        (train_images, train_labels) if split == "train" else (test_images, test_labels)
    )
    rng = np.random.default_rng([seed, 0] if split == "train" else [_TEST_STREAM, 1])
    canvas, chosen = render_clips(
        images, count, frames=frames, height=height, width=width, distractor=distractor, rng=rng
    )
    return canvas, labels[chosen]


def load_video(
    seed: int = 0,
    *,
    frames: int = 8,
    height: int = 64,
    width: int = 64,
    train_clips: int = 2000,
    test_clips: int = 500,
    distractor: float = 0.35,
    source: str = "auto",
) -> Dataset:
    """Clips as float32 ``(N, frames, 1, height, width)``, standardised with train statistics.

    ``distractor`` is the distractor digit's peak intensity relative to the labelled digit
    (0 disables it). ``source`` picks the MNIST package (see `read_digits`). Default sizes
    (2000 + 500 clips, 330 MB as float32)
    generate in about a second; `load_dataset` caches the result.
    """
    if frames < 1 or height < DIGIT or width < DIGIT:
        raise InvalidDataset(
            f"video: need frames ≥ 1 and frames of at least {DIGIT}×{DIGIT} "
            f"pixels, got {frames}×{height}×{width}"
        )
    if train_clips < 1 or test_clips < 1:
        raise InvalidDataset("video: train_clips and test_clips must be ≥ 1")
    if not 0.0 <= distractor <= 1.0:
        raise InvalidDataset(f"video: distractor intensity must be in [0, 1], got {distractor}")
    shape = (frames, height, width, float(distractor), source)
    train, y_train = _clips("train", train_clips, seed, *shape)
    test, y_test = _clips("test", test_clips, 0, *shape)
    mean = float(train.mean(dtype=np.float64)) / 255.0
    std = float(train.std(dtype=np.float64)) / 255.0 or 1.0

    def normalise(canvas: NDArray[np.uint8]) -> NDArray[np.float32]:
        x = (canvas.astype(np.float32) / np.float32(255.0) - np.float32(mean)) / np.float32(std)
        return x[:, :, None, :, :]

    return Dataset(
        name="video",
        x_train=normalise(train),
        y_train=y_train,
        x_test=normalise(test),
        y_test=y_test,
        num_classes=10,
        model_id=canonical_model_id("video-cnn", (frames, 1, height, width), 10),
        seed=seed,
        class_names=tuple(str(d) for d in range(10)),
        info={
            "frames": frames,
            "height": height,
            "width": width,
            "distractor": distractor,
            "pixel_mean": mean,
            "pixel_std": std,
        },
    )
