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
    "control-plane": (
        "simultrain.bench.control_plane:control_plane_suite",
        "the coordinator under N simulated edges, HTTP only",
    ),
    "control-plane-failover": (
        "simultrain.bench.failover:failover_suite",
        "kill -9 a cloud under streaming edge agents, time the move; also --suite "
        "control-plane --failover",
    ),
}
