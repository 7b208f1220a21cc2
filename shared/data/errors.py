"""Data errors, a branch of the project's exception tree (`simultrain.shared.errors`).

ConfigError
└── DatasetError (also a ValueError)
    ├── UnknownDataset       no such dataset name, or an option it does not take
    ├── DatasetUnavailable   the package or file that ships the data is missing
    └── InvalidDataset       the data is there but malformed (shapes, dtypes, labels, NaN)
"""

from __future__ import annotations

from simultrain.shared.errors import ConfigError

__all__ = ["DatasetError", "DatasetUnavailable", "InvalidDataset", "UnknownDataset"]


class DatasetError(ConfigError, ValueError):
    """Base of every data-loading error."""


class UnknownDataset(DatasetError):
    """No dataset of this name, or an option the dataset does not take."""


class DatasetUnavailable(DatasetError):
    """The package or file that ships the data is not installed / not there."""


class InvalidDataset(DatasetError):
    """The data is malformed: missing arrays, mismatched lengths, bad dtypes, labels, NaN."""
