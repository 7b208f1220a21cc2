"""Write the project's MNIST (shared/data/mnist.py) as an ``npz`` file: ``X`` (N×1×28×28,
float32, normalised as there), ``y``, ``X_test``, ``y_test`` — the input `examples.tiny_mobilenet`
trains on. Usage: ``python -m examples.mnist_npz OUT.npz``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from simultrain.shared.data import load_dataset


def write_mnist_npz(path: Path) -> Path:
    """Save the MNIST train and test splits to ``path``; returns it."""
    mnist = load_dataset("mnist")
    np.savez_compressed(
        path, X=mnist.x_train, y=mnist.y_train, X_test=mnist.x_test, y_test=mnist.y_test
    )
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m examples.mnist_npz OUT.npz")
    print(write_mnist_npz(Path(sys.argv[1])))
