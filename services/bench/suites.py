"""The suites ``simultrain bench --suite NAME`` runs on their own: one entry each.

An entry is ``"module:function"`` and a line of help. The function takes the bench's
:class:`~simultrain.bench.harness.SuiteOptions` and returns the suite's
:class:`~simultrain.bench.harness.Experiment`; its module is imported only when the suite
runs, and this one imports nothing, so ``simultrain bench --help`` lists the suites for free.
"""

from __future__ import annotations

__all__ = ["SUITES"]

SUITES: dict[str, tuple[str, str]] = {
    "fleet": ("simultrain.bench.fleet:fleet_suite", "N edges against one cloud"),
    "stragglers": ("simultrain.bench.fleet:stragglers_suite", "8 edges, 1-2 slowed 5×"),
}
